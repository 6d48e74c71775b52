"""The model definitions. Each subpackage is a remote-code unit: its files import only their siblings, so
`save_pretrained` can copy them beside the weights."""
