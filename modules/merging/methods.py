"""Per-tensor merge methods for the checkpoint merger: small pure functions behind one signature.

The streaming engine (`modules/merging/merger.py`) reads one key at a time from A, B and C and calls
`MergeMethod.fn(a, b, c, params=MergeParams(alpha=M, beta=N, options=...), key=...)`. Every function:
- takes floating-point tensors of one shape, computes in float32 and returns float32 (the engine
  casts to the output dtype);
- rejects integer/bool tensors with a TypeError: those are buffers such as `position_ids`, which
  the engine copies from A instead of merging;
- is pure: no state is kept between calls, so keys can be merged in any order or in parallel.
  Only DARE is random, and its generator is seeded from (options.seed, key) alone.
`params.alpha` is A1111's multiplier M (per key when block weights are used), `params.beta` the
second multiplier N of supermerger's three-model sums.

Sources are named in each docstring; no code is taken from A1111 (AGPL) or supermerger (AGPL).
SLERP's norm handling follows sd-mecha (MIT, ljleb), its near-parallel threshold the common
`slerp(DOT_THRESHOLD=0.9995)` gist used by many SD tools.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported by the functions that compute: the method table is read while the server
# starts (the merger tab's choices), before torch is imported (tests/test_startup_imports.py).

__all__ = [
    "MERGE_METHODS",
    "MergeFunction",
    "MergeMethod",
    "MergeOptions",
    "MergeParams",
    "dare_seed",
    "get_method",
    "merge_tensor",
    "ties_merge_deltas",
]

# supermerger's constant factor on the rescaled delta; its docs give no derivation, and we keep it
# so that a given M merges as it does there.
TRAIN_DIFFERENCE_GAIN = 1.8
# Above this |cos| the angle is too small (or too close to 180°) for sin(Ω) to be divided by safely.
SLERP_PARALLEL_THRESHOLD = 0.9995


@dataclass(frozen=True)
class MergeOptions:
    """Settings of the methods that need more than M and N; the same for every key of a merge.

    seed: DARE's drop masks come from `dare_seed(seed, key)`.
    ties_density: fraction of each task vector TIES keeps (its top magnitudes); the paper's
        default keeps the top 20%.
    dare_drop_rate: DARE's drop probability p; the paper drops 90% or more of a fine-tune's delta.
    """

    seed: int = 0
    ties_density: float = 0.2
    dare_drop_rate: float = 0.9

    def __post_init__(self) -> None:
        # User input reaches here from the API's JSON and the CLI's key=value pairs: check types too.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        for name in ("ties_density", "dare_drop_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not 0.0 < self.ties_density <= 1.0:
            raise ValueError(f"ties_density must be in (0, 1], got {self.ties_density!r}")
        if not 0.0 <= self.dare_drop_rate < 1.0:
            raise ValueError(
                f"dare_drop_rate must be in [0, 1), got {self.dare_drop_rate!r} "
                "(p = 1 would drop the whole difference and divide by zero when rescaling)"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> MergeOptions:
        """Options from user input by name; an unknown name raises listing the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = [name for name in values if name not in valid]
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"unknown merge option(s) {names}; valid options: {', '.join(valid)}")
        return cls(**values)  # type: ignore[arg-type]  # types are checked in __post_init__


@dataclass(frozen=True)
class MergeParams:
    """The numbers one key is merged with, passed as one value so every method has the same short
    signature: `alpha` is M (the block's weight where block weights apply), `beta` is N, `options`
    the method settings of the whole merge."""

    alpha: float
    beta: float = 0.0
    options: MergeOptions = MergeOptions()


class MergeFunction(Protocol):
    def __call__(self, a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str) -> Tensor: ...


def _operands(key: str, **tensors: Tensor | None) -> list[Tensor]:
    """Check the named operands (present, floating point, one shape) and return them as float32."""
    import torch

    out: list[Tensor] = []
    for role, t in tensors.items():
        if t is None:
            raise ValueError(f"{key}: this merge method needs model {role}, but no tensor was given")
        if not t.dtype.is_floating_point:
            raise TypeError(
                f"{key}: model {role} holds a {t.dtype} tensor; merge methods only take floating-point "
                "tensors (integer buffers such as position_ids are copied from A, not merged)"
            )
        if out and t.shape != out[0].shape:
            raise ValueError(f"{key}: shapes differ: A {tuple(out[0].shape)} vs {role} {tuple(t.shape)}")
        out.append(t.to(torch.float32))
    return out


def no_interpolation(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A unchanged (A1111 "No interpolation": the merger only converts, bakes a VAE or prunes).

    May return A itself when it is already float32; callers must not write into the result.
    """
    (a,) = _operands(key, A=a)
    return a


def weighted_sum(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A·(1−M) + B·M (A1111 "Weighted sum"), computed as one fused `lerp` (A + M·(B − A)): the same
    value up to float rounding, in one pass over memory instead of three."""
    import torch

    a, b = _operands(key, A=a, B=b)
    return torch.lerp(a, b, params.alpha)


def _lerp_into(a: Tensor, b: Tensor, c: Tensor | None, params: MergeParams, out: Tensor) -> None:
    # torch's CPU lerp on float16/bfloat16 computes in float32 and rounds once, so this equals
    # `weighted_sum` then a cast, without the float32 copies (tests compare the two).
    import torch

    torch.lerp(a, b, params.alpha, out=out)


def add_difference(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A + (B − C)·M (A1111 "Add difference"; B − C is the task vector of Ilharco et al. 2023)."""
    a, b, c = _operands(key, A=a, B=b, C=c)
    difference = b - c
    return difference.mul_(params.alpha).add_(a)  # in place on the temporary: one allocation


def slerp(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """Spherical interpolation of the flattened tensors (Shoemake 1985), norm interpolated linearly.

    As sd-mecha's `slerp`: the unit directions are slerped, then scaled by (1−M)·|A| + M·|B|, so
    M=0 gives A, M=1 gives B and the result's norm always lies between |A| and |B|. When the
    directions are nearly parallel or opposite (|cos Ω| > 0.9995, the threshold of the widely copied
    `slerp` gist), or a tensor is all zeros, sin Ω is too small to divide by and we fall back to
    the weighted sum.
    """
    import torch

    alpha = params.alpha
    a, b = _operands(key, A=a, B=b)
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if norm_a == 0 or norm_b == 0:
        return torch.lerp(a, b, alpha)
    unit_a, unit_b = a / norm_a, b / norm_b
    cos_omega = float((unit_a * unit_b).sum().clamp(-1.0, 1.0))
    if abs(cos_omega) > SLERP_PARALLEL_THRESHOLD:
        return torch.lerp(a, b, alpha)
    omega = math.acos(cos_omega)
    direction = (unit_a * math.sin((1.0 - alpha) * omega) + unit_b * math.sin(alpha * omega)) / math.sin(omega)
    return direction * torch.lerp(norm_a, norm_b, alpha)


def train_difference(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A + 1.8·M·(B − C)·|B − A| / (|B − A| + |B − C|), the ratio 0 where both distances are 0.

    supermerger's "trainDifference" calc mode (hako-mikan/sd-webui-supermerger, also sd-mecha's
    `train_difference_mask`): each element of the task vector B − C is scaled by how far A is from
    B relative to how far C is, so elements where A already matches B change less.
    """
    import torch

    a, b, c = _operands(key, A=a, B=b, C=c)
    dist_a, dist_c = (b - a).abs(), (b - c).abs()
    # 0/0 (A, B and C equal at that element) is the only NaN; the delta is 0 there anyway.
    ratio = torch.nan_to_num(dist_a / (dist_a + dist_c), nan=0.0)
    return a + (b - c) * ratio * (TRAIN_DIFFERENCE_GAIN * params.alpha)


def _trim_top_magnitudes(delta: Tensor, density: float) -> Tensor:
    """Zero all but the `density` fraction of largest |values| (ties at the cut are all kept)."""
    import torch

    n = delta.numel()
    # At least one element survives, so a small tensor (a bias, a scalar) keeps its largest change.
    k = min(n, max(1, round(density * n)))
    if k == n:
        return delta
    magnitudes = delta.abs()
    threshold = magnitudes.flatten().kthvalue(n - k + 1).values
    return torch.where(magnitudes >= threshold, delta, 0.0)


def ties_merge_deltas(deltas: Sequence[Tensor], density: float) -> Tensor:
    """TIES-merging of task vectors (Yadav et al. 2023, "TIES-Merging: Resolving Interference ...").

    1. Trim: keep each delta's top `density` fraction by magnitude.
    2. Elect sign: per element, the sign of the sum of the trimmed values (the sign with the larger
       total magnitude).
    3. Disjoint mean: average only the trimmed values that carry the elected sign; 0 where none do.
    """
    import torch

    if not deltas:
        raise ValueError("TIES needs at least one task vector")
    trimmed = torch.stack([_trim_top_magnitudes(d, density) for d in deltas])
    elected = torch.sign(trimmed.sum(dim=0))
    agrees = (torch.sign(trimmed) == elected) & (trimmed != 0)
    count = agrees.sum(dim=0)
    total = torch.where(agrees, trimmed, 0.0).sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), 0.0)


def ties_add_difference(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A + M·TIES(B − C) (Yadav et al. 2023) with one task vector.

    With a single task vector the sign election and disjoint mean keep every trimmed value as it
    is, so this is add difference on the top `options.ties_density` of |B − C|: the paper's trim
    step, which drops the small, mostly redundant changes of the fine-tune.
    """
    a, b, c = _operands(key, A=a, B=b, C=c)
    return a + ties_merge_deltas([b - c], params.options.ties_density) * params.alpha


def dare_seed(seed: int, key: str) -> int:
    """The generator seed of one key: a hash of (seed, key), so masks don't depend on key order.

    Python's `hash()` of a str changes between processes (PYTHONHASHSEED); blake2b does not.
    """
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def dare_add_difference(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A + M·DARE(B − C) (Yu et al. 2023, "Language Models are Super Mario", Drop And REscale).

    Each element of the task vector is dropped with probability p = `options.dare_drop_rate` and
    the survivors are divided by 1 − p, which keeps the expected delta unchanged. The mask is drawn
    on the CPU from `dare_seed(options.seed, key)`, so one seed gives the same merge on any device
    and in any key order.
    """
    import torch

    a, b, c = _operands(key, A=a, B=b, C=c)
    p = params.options.dare_drop_rate
    generator = torch.Generator().manual_seed(dare_seed(params.options.seed, key))
    keep = (torch.rand(a.shape, generator=generator) >= p).to(a.device)
    return a + torch.where(keep, b - c, 0.0) * (params.alpha / (1.0 - p))


def triple_sum(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """A·(1 − M − N) + B·M + C·N (supermerger "Triple sum")."""
    alpha, beta = params.alpha, params.beta
    a, b, c = _operands(key, A=a, B=b, C=c)
    return a * (1.0 - alpha - beta) + b * alpha + c * beta


def sum_twice(
    a: Tensor, b: Tensor | None, c: Tensor | None, *, params: MergeParams, key: str
) -> Tensor:
    """(A·(1 − M) + B·M)·(1 − N) + C·N (supermerger "sum Twice")."""
    alpha, beta = params.alpha, params.beta
    a, b, c = _operands(key, A=a, B=b, C=c)
    return (a * (1.0 - alpha) + b * alpha) * (1.0 - beta) + c * beta


@dataclass(frozen=True)
class MergeMethod:
    """One row of the merge-method table; `fn` has the `MergeFunction` signature."""

    name: str
    fn: MergeFunction
    needs_b: bool
    needs_c: bool
    uses_beta: bool
    description: str
    # Each output element depends only on the same element of A, B and C, so the engine may run
    # `fn` over slices of a tensor (cache-sized chunks) with the same result as over the whole.
    elementwise: bool = False
    # Optional exact shortcut `(a, b, c, params, out)` for inputs that all share the output's
    # floating dtype: it must give bit-for-bit what `fn` followed by a cast gives (tested), and
    # exists where one torch kernel already computes in float32 internally and rounds once.
    same_dtype_kernel: Callable[..., None] | None = None


MERGE_METHODS: Mapping[str, MergeMethod] = MappingProxyType({
    m.name: m
    for m in (
        MergeMethod("No interpolation", no_interpolation, False, False, False, "A unchanged", elementwise=True),
        MergeMethod("Weighted sum", weighted_sum, True, False, False, "A·(1−M) + B·M", elementwise=True,
                    same_dtype_kernel=_lerp_into),
        MergeMethod("Add difference", add_difference, True, True, False, "A + (B−C)·M", elementwise=True),
        MergeMethod("SLERP", slerp, True, False, False, "spherical interpolation from A (M=0) to B (M=1)"),
        MergeMethod(
            "Train difference", train_difference, True, True, False,
            "A + (B−C)·M, each element scaled by A's distance to B (supermerger)", elementwise=True,
        ),
        MergeMethod(
            "Add difference (TIES)", ties_add_difference, True, True, False,
            "A + (B−C)·M keeping only the largest changes (TIES trim)",
        ),
        MergeMethod(
            "Add difference (DARE)", dare_add_difference, True, True, False,
            "A + (B−C)·M with random drops, rescaled (DARE, seeded)",
        ),
        MergeMethod("Triple sum", triple_sum, True, True, True, "A·(1−M−N) + B·M + C·N", elementwise=True),
        MergeMethod("Sum twice", sum_twice, True, True, True, "(A·(1−M) + B·M)·(1−N) + C·N", elementwise=True),
    )
})


def get_method(name: str) -> MergeMethod:
    """The method called `name`; an unknown name raises a ValueError listing the valid ones."""
    method = MERGE_METHODS.get(name)
    if method is None:
        close = difflib.get_close_matches(name, list(MERGE_METHODS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(repr(n) for n in MERGE_METHODS)
        raise ValueError(f"unknown merge method {name!r}.{hint} Valid methods: {valid}")
    return method


def merge_tensor(
    method: MergeMethod, a: Tensor, b: Tensor | None, c: Tensor | None, params: MergeParams, *, key: str
) -> Tensor:
    """Merge one key's tensors with `method` (the engine's single call into this module)."""
    return method.fn(a, b, c, params=params, key=key)
