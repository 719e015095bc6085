"""LeNet-300-100 with biases (the Neuron Merging / LBYL Fashion-MNIST model)."""
from __future__ import annotations

from torch import nn

from ..units import select_producers


class LeNet300(nn.Module):
    """``flatten(784) -> ip1 -> ReLU -> ip2 -> ReLU -> ip3``; keys ``ip{1,2,3}.{weight,bias}``."""

    example_input_size = (1, 1, 28, 28)
    default_nm_threshold = 0.45  # the Neuron Merging scripts' LeNet setting (docs/method.md §12.2)

    def __init__(self, num_classes: int = 10, in_features: int = 784):
        super().__init__()
        self.ip1 = nn.Linear(in_features, 300)
        self.ip2 = nn.Linear(300, 100)
        self.ip3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = x.flatten(1)
        return self.ip3(self.relu(self.ip2(self.relu(self.ip1(x)))))

    def select_units(self, units):
        # Both hidden layers; counts use round() and criteria see [w, b] (docs/method.md §11).
        return select_producers(units, [self.ip1, self.ip2], self, count_rule="round")
