"""Losses to study: quadratics with exact flows, logistic regression and an MLP on digits, games."""

from ._digits import (
    logistic_digits as logistic_digits,
    logistic_loss as logistic_loss,
    mlp_digits as mlp_digits,
    mlp_loss as mlp_loss,
)
from ._games import (
    bilinear_game as bilinear_game,
    bilinear_game_losses as bilinear_game_losses,
    tanh_game as tanh_game,
    tanh_game_losses as tanh_game_losses,
)
from ._networks import (
    cnn_mnist1d as cnn_mnist1d,
    cnn_num_params as cnn_num_params,
    Conv1D as Conv1D,
    deep_linear as deep_linear,
    fc_digits as fc_digits,
    fc_num_params as fc_num_params,
    fc_synthetic as fc_synthetic,
    FullyConnected as FullyConnected,
    NetworkLoss as NetworkLoss,
)
from ._problem import AbstractProblem as AbstractProblem, Problem as Problem
from ._quadratic import (
    quadratic as quadratic,
    quadratic_batches as quadratic_batches,
    quadratic_loss as quadratic_loss,
    QuadraticProblem as QuadraticProblem,
    random_spectrum_matrix as random_spectrum_matrix,
)
