"""kNN classification on frozen features (cosine similarity, temperature-weighted votes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------
# kNN and top-k
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> torch.Tensor:
    """Class scores (Q, num_classes) for each query from its k most cosine-similar training features.

    Each neighbour votes for its label with weight exp(similarity / temperature) (the weighted kNN of
    Wu et al. 2018, as used by DINO).
    """
    if len(train_features) == 0:
        raise ValueError("kNN needs at least one training feature")
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(query_features), chunk_size):
        query = F.normalize(query_features[start:start + chunk_size].float().to(train.device), dim=1)
        similarity, index = (query @ train.T).topk(k, dim=1)  # (q, k)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(query), num_classes, device=train.device)
        votes.scatter_add_(1, labels[index], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_features, train_labels, query_features, query_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent of `knn_predict` on labelled queries."""
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1).cpu() == query_labels.long().cpu()).float().mean().item()
