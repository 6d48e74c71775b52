"""Hub sharing: HTTP policy (`http`), upload folders (`folders`), model cards (`cards`), pushes (`push`)."""
