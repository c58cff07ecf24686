"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017; seed 004).

Algorithm 1 of seed 004, for each variable ("layer") w with gradient g, global LR
gamma, momentum m, weight decay beta and trust coefficient eta:

    lambda = eta * ||w|| / (||g|| + beta * ||w|| + eps)   (Eq. 6; 1 if ||w||, ||g|| = 0)
    v     <- m * v + gamma * lambda * (g + beta * w)
    w     <- w - v          (Nesterov: w <- w - m * v - gamma * lambda * (g + beta * w))

Weight decay is coupled (it enters the ratio and the update), so the base class'
decoupled weight decay (`Optimizer(weight_decay=...)`) is switched off: the coefficient
lives in `LARS.coupled_weight_decay` and `get_config()["weight_decay"]`.

By default every variable is adapted, biases and batch-norm gamma/beta included, as the
paper states (seed 004 adapts every layer; the authors' nvcaffe code applies the local LR to
every blob; optax's `lars` adapts every parameter by default). Excluded variables (every
variable of rank <= 1 with `exclude_rank_1=True`, the MLPerf / timm convention that
gin/experiments/lars_imagenet_resnet50.gin binds; plus those named through
`exclude_from_layer_adaptation`) get momentum SGD without trust ratio or weight decay:
`v <- m * v + gamma * g`.

Backends: only `keras.ops`, so it runs on TensorFlow, JAX and PyTorch. Sparse gradients
(TF `IndexedSlices`, JAX `BCOO`) are densified first: the trust ratio needs the norm of the
whole gradient, and the momentum update touches every row anyway.

The most recent local LR of every variable is kept in a scalar optimizer variable (1.0
for excluded ones) and returned by `LARS.trust_ratios()` for TensorBoard.

Distribution: with the TensorFlow backend `apply_gradients` sums the gradients over
replicas before `update_step` runs (`TFOptimizer._backend_update_step`), so the norms
are those of the all-reduced gradient and every replica computes the same ratio.
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

TRUST_RATIO_FORMS = ("paper", "decay_in_gradient_norm")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package="keras_largebatch")
class LARS(keras.optimizers.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (seed 004, Algorithm 1).

    Example:

    ```python
    opt = LARS(learning_rate=2.0, momentum=0.9, weight_decay=5e-4,
               trust_coefficient=0.001)
    opt.exclude_from_layer_adaptation(var_names=["logits"])  # optional, before fit
    model.compile(optimizer=opt, loss=...)
    ```

    Args:
        learning_rate: global LR gamma: a float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` or a callable.
        momentum: m in [0, 1).
        weight_decay: coupled L2 coefficient beta >= 0, in the trust ratio and the
            update of adapted variables (excluded variables get none).
        trust_coefficient: eta > 0: how far a layer may move, relative to its norm,
            per step and unit of global LR.
        epsilon: >= 0, added to the trust-ratio denominator.
        nesterov: use Nesterov momentum.
        exclude_rank_1: `False` (default): adapt every variable, as in the paper.
            `True`: exclude every variable of rank <= 1 (biases, BN gamma/beta) from trust
            ratio and weight decay, as MLPerf and timm do.
        trust_ratio_form: `"paper"`: eta*||w|| / (||g|| + beta*||w|| + eps) (Eq. 6);
            `"decay_in_gradient_norm"`: eta*||w|| / (||g + beta*w|| + eps), the TF
            Model Garden form, for porting its configs.
        **kwargs: the base optimizer's arguments (`clipnorm`, `global_clipnorm`,
            `use_ema`, `loss_scale_factor`, `gradient_accumulation_steps`, ...).
    """

    def __init__(
        self,
        learning_rate=1.0,
        momentum=0.9,
        weight_decay=0.0,
        trust_coefficient=0.001,
        epsilon=0.0,
        nesterov=False,
        exclude_rank_1=False,
        trust_ratio_form="paper",
        name=None,
        **kwargs,
    ):
        if _is_number(learning_rate):
            if not math.isfinite(learning_rate) or learning_rate < 0:
                raise ValueError(
                    "`learning_rate` must be a finite number >= 0 or a "
                    f"LearningRateSchedule. Received: learning_rate={learning_rate}"
                )
            learning_rate = float(learning_rate)
        if weight_decay is None:
            weight_decay = 0.0
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if not _is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
        if not _is_number(weight_decay) or not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(
                "`weight_decay` must be a finite number >= 0. "
                f"Received: weight_decay={weight_decay}"
            )
        if not _is_number(trust_coefficient) or not (
            math.isfinite(trust_coefficient) and trust_coefficient > 0
        ):
            raise ValueError(
                "`trust_coefficient` must be a finite number > 0. "
                f"Received: trust_coefficient={trust_coefficient}"
            )
        if not _is_number(epsilon) or not (math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"`epsilon` must be a finite number >= 0. Received: epsilon={epsilon}")
        if trust_ratio_form not in TRUST_RATIO_FORMS:
            raise ValueError(
                f"`trust_ratio_form` must be one of {', '.join(TRUST_RATIO_FORMS)}. "
                f"Received: trust_ratio_form={trust_ratio_form!r}"
            )
        for flag, value in (("nesterov", nesterov), ("exclude_rank_1", exclude_rank_1)):
            if not isinstance(value, bool):
                raise ValueError(f"`{flag}` must be True or False. Received: {flag}={value!r}")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.epsilon = float(epsilon)
        self.nesterov = bool(nesterov)
        self.exclude_rank_1 = bool(exclude_rank_1)
        self.trust_ratio_form = trust_ratio_form
        self._excluded_keys = set()
        self._excluded_paths = set()
        self._excluded_names = ()

    def exclude_from_layer_adaptation(self, var_list=None, var_names=None):
        """Exclude variables from trust ratio and weight decay (before training).

        Same shape as `exclude_from_weight_decay`: `var_list` names variables by
        identity, `var_names` by substring of the variable path (`"dense_1/kernel"`),
        so a layer name or a variable name both work. Calls accumulate. Excluded
        variables are updated with `v <- m * v + lr * g`.
        """
        if self.built:
            raise ValueError(
                "`exclude_from_layer_adaptation()` can only be configured before the "
                "optimizer is built (before the first training step)."
            )
        for variable in var_list or ():
            self._excluded_keys.add(self._var_key(variable))
            self._excluded_paths.add(_path(variable))
        self._excluded_names += tuple(str(n) for n in var_names or ())

    def _is_adapted(self, variable) -> bool:
        if self.exclude_rank_1 and len(variable.shape) <= 1:
            return False
        if self._var_key(variable) in self._excluded_keys:
            return False
        path = _path(variable)
        if path in self._excluded_paths:
            return False
        return not any(name in path for name in self._excluded_names)

    def build(self, var_list):
        """Create momentum slots and one scalar trust-ratio variable per variable."""
        if self.built:
            return
        super().build(var_list)
        # Decided once, on the Keras variables: update_step may get replica components.
        self._adapted = [self._is_adapted(v) for v in var_list]
        self._decayed = [self._use_weight_decay(v) for v in var_list]
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(var_list, "momentum")
        self._trust_ratio_variables = []
        for variable in var_list:
            self._trust_ratio_variables.append(
                self.add_variable(
                    shape=(),
                    initializer="ones",
                    dtype="float32",
                    aggregation="only_first_replica",
                    name=f"{_path(variable).replace('/', '_')}_trust_ratio",
                )
            )

    def apply(self, grads, trainable_variables=None):
        if self.weight_decay is not None:
            # The base class would add its decoupled decay on top of the coupled one.
            raise ValueError(
                "LARS applies weight decay itself (coupled, inside the trust ratio); "
                "set it with LARS(weight_decay=...), not optimizer.weight_decay. "
                f"Received: optimizer.weight_decay={self.weight_decay}"
            )
        return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        """One LARS step for `variable` (gradient already all-reduced)."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(ops.convert_to_tensor(gradient, sparse=False), dtype)

        if self._adapted[index]:
            wd = self.coupled_weight_decay if self._decayed[index] else 0.0
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            direction = ops.add(g, ops.multiply(variable, wd)) if wd else g
            if self.trust_ratio_form == "paper":
                denominator = g_norm + wd * w_norm + self.epsilon
            else:
                denominator = ops.sqrt(ops.sum(ops.square(direction))) + self.epsilon
            usable = ops.logical_and(ops.greater(w_norm, 0), ops.greater(g_norm, 0))
            safe_denominator = ops.where(usable, denominator, 1.0)
            trust_ratio = ops.where(
                usable,
                self.trust_coefficient * w_norm / safe_denominator,
                ops.ones_like(w_norm),
            )
            self.assign(self._trust_ratio_variables[index], trust_ratio)
            step = ops.multiply(direction, lr * trust_ratio)
        else:
            step = ops.multiply(g, lr)

        if self.momentum == 0:
            self.assign_sub(variable, step)
            return
        v = self.momentums[index]
        momentum = ops.cast(self.momentum, dtype)
        self.assign(v, ops.add(ops.multiply(v, momentum), step))
        if self.nesterov:
            self.assign_sub(variable, ops.add(ops.multiply(v, momentum), step))
        else:
            self.assign_sub(variable, v)

    def trust_ratios(self, include_excluded: bool = False) -> dict:
        """{variable path: scalar variable holding its most recent local LR lambda}.

        Only adapted variables unless `include_excluded` (excluded ones hold a
        constant 1.0); empty before the optimizer is built. The train step writes
        these scalars anyway; reading them costs nothing there.
        """
        if not self.built:
            return {}
        return {
            _path(variable): ratio
            for variable, ratio, adapted in zip(
                self._trainable_variables,
                self._trust_ratio_variables,
                self._adapted,
                strict=True,
            )
            if adapted or include_excluded
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.coupled_weight_decay,
                "trust_coefficient": self.trust_coefficient,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "exclude_rank_1": self.exclude_rank_1,
                "trust_ratio_form": self.trust_ratio_form,
            }
        )
        if self._excluded_paths or self._excluded_names:
            # var_list exclusions survive serialization as exact variable paths.
            config["excluded_from_layer_adaptation"] = {
                "var_paths": sorted(self._excluded_paths),
                "var_names": list(self._excluded_names),
            }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        excluded = config.pop("excluded_from_layer_adaptation", None)
        optimizer = super().from_config(config, custom_objects=custom_objects)
        if excluded:
            optimizer._excluded_paths.update(excluded.get("var_paths", ()))
            optimizer._excluded_names += tuple(excluded.get("var_names", ()))
        return optimizer


def _path(variable) -> str:
    return getattr(variable, "path", None) or variable.name
