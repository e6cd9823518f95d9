"""Tiny models and datasets built in memory (no download) for the tests."""

from __future__ import annotations

import torch


def tiny_bert(num_layers: int = 12, num_labels: int = 3, seed: int = 0, dropout: float = 0.1):
    """A BertForSequenceClassification with hidden size 16, built from a config."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


class RandomTokens(torch.utils.data.Dataset):
    """Random token sequences whose label is the first token modulo ``num_labels``."""

    def __init__(self, size: int = 64, length: int = 8, num_labels: int = 3, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, 64, (size, length), generator=generator)
        self.labels = self.input_ids[:, 0] % num_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones_like(self.input_ids[index]),
            "labels": self.labels[index],
        }


class TinyMLP(torch.nn.Module):
    """An nn.Sequential MLP that returns a Trainer-style output with a loss."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_labels: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, num_labels),
        )

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


class RandomVectors(torch.utils.data.Dataset):
    """Gaussian vectors labelled by the sign pattern of their first two features."""

    def __init__(self, size: int = 64, features: int = 8, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, features, generator=generator)
        self.labels = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "labels": self.labels[index]}


def save_tiny_bert_folder(path, num_layers: int = 2, seed: int = 0):
    """Save a tiny pretrained-style BERT (no head) and a character-level WordPiece tokenizer to ``path``.

    The folder loads with ``AutoModelForSequenceClassification`` and ``AutoTokenizer`` like a Hub
    checkpoint, so recipes can fine-tune it offline in seconds. Returns ``path``.
    """
    import string
    from pathlib import Path

    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    characters = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *(f"##{c}" for c in characters)]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(path)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path
