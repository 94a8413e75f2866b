"""PyTorch's own removal functions, working on this library's weight norms.

Inference scripts remove weight norm with the function of the weight norm they were written
for: ``torch.nn.utils.remove_weight_norm(layer)`` (HiFi-GAN, BigVGAN, transformers' vocoders
and codecs) or ``torch.nn.utils.parametrize.remove_parametrizations(layer, "weight")``. Both
work on a module with this library's weight norm, and do what
:func:`weightnorm.remove_weight_norm` does, bit for bit. Neither adds anything to a forward call.

- ``torch.nn.utils.remove_weight_norm(module, name)`` looks through
  ``module._forward_pre_hooks.items()`` for an instance of its hook class with that ``name``.
  That dict is a :class:`~weightnorm._torch_compat.HookDict`, holding one
  :class:`~weightnorm._torch_compat.RemovalHook` per normalized name where ``nn.Module``'s call
  does not look (it tests the dict's length). A module that had forward pre-hooks of its own
  when the weight norm was applied keeps its dict (the hooks' handles hold it), and torch's
  function does not find the weight norm there: its ``ValueError`` says so.
- ``parametrize.remove_parametrizations(module, name)`` reads ``module.parametrizations``, a
  property of the module's class: an empty ``ModuleDict`` (so ``is_parametrized(module)`` stays
  False) that contains each normalized name. Then torch's function runs a fixed sequence (the
  same in torch 2.4.1, 2.13.0 and 2.15.0; ``tests/test_torch_internals.py`` checks it). It reads
  ``parametrizations[name].original``: from here the module is in a class of its own for this
  run (:class:`_Removal`). It reads ``module.<name>`` (only with ``leave_parametrized=True``):
  that read removes the weight norm and returns the folded Parameter, which is ``v``. It sets
  ``original`` (the same ``v``) to it, deletes the class attribute ``<name>``, deletes
  ``parametrizations[name]``, registers ``original`` as ``<name>`` and, the module having no
  parametrization left, gives it its class back. With ``leave_parametrized=False`` the read
  does not happen: the deletion restores the module and raises a ``WeightNormError`` that
  names the ways that work.
- Stacking a parametrization on a normalized name (``register_parametrization``, e.g. spectral
  norm) is refused with a ``WeightNormError`` naming ``wn.fold``.
- Code written for torch's parametrize weight norm that tests ``hasattr(module,
  "parametrizations")`` and reads ``module.parametrizations.weight.original0`` (g) and
  ``.original1`` (v) gets this library's g and v.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from . import _torch_compat as compat
from ._errors import WeightNormError

__all__ = ["TorchRemovable", "expose"]


class TorchRemovable:
    """Base of every weight-normalized module class: what torch's removal functions read.

    The class that uses it says which names are normalized (``_wn_torch_names``, name to the
    unit dim) and how one is removed (``_wn_torch_remove``), and calls :func:`expose` whenever
    they change."""

    def _wn_torch_names(self) -> dict[str, int | None]:
        raise NotImplementedError

    def _wn_torch_remove(self, name: str) -> None:
        raise NotImplementedError

    @property
    def parametrizations(self) -> nn.ModuleDict:
        """What ``torch.nn.utils.parametrize`` finds here: the module's own parametrizations,
        if torch's ``register_parametrization`` added some; otherwise an empty view that
        contains each name this library normalizes."""
        module = cast(nn.Module, self)
        real = module._modules.get("parametrizations")
        if real is not None:
            return cast(nn.ModuleDict, real)
        return _Parametrizations(module)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        expose(cast(nn.Module, self))


def expose(module: nn.Module) -> None:
    """Make ``torch.nn.utils.remove_weight_norm`` find the weight norms ``module`` has now (and
    none it had before): called whenever they change, and after unpickling."""
    names = module._wn_torch_names() if isinstance(module, TorchRemovable) else {}
    hooks = compat.hook_dict(module) if names else module.__dict__.get("_forward_pre_hooks")
    if isinstance(hooks, compat.HookDict):
        hooks.hidden = {
            f"weightnorm.{name}": compat.RemovalHook(name, dim, _remove)
            for name, dim in names.items()
        }


def _remove(module: nn.Module, name: str) -> None:
    cast(TorchRemovable, module)._wn_torch_remove(name)


def _kind(module: nn.Module) -> str:
    """The module's class as its user made it (not the weight-normalized subclass)."""
    return cast(type, getattr(type(module), "_wn_root", type(module))).__name__


def _fold_first(module: nn.Module, name: str) -> str:
    return (
        f"{_kind(module)}.{name} carries weightnorm's weight norm; torch's parametrize "
        f"can only remove it (remove_parametrizations(module, {name!r})). To stack another "
        f"parametrization on it, remove it first: wn.remove_weight_norm(module, {name!r}), or "
        "wn.fold(model) for a whole model"
    )


class _Parametrizations(nn.ModuleDict):
    """``module.parametrizations`` of a module with this library's weight norm and no
    parametrization of torch's: empty (``parametrize.is_parametrized(module)`` is False), but
    it contains each normalized name, so ``remove_parametrizations(module, name)`` finds it."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        self.__dict__["_owner"] = owner  # (not a submodule)

    def _names(self) -> dict[str, int | None]:
        return cast(TorchRemovable, self.__dict__["_owner"])._wn_torch_names()

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return _Entry(self.__dict__["_owner"], key)

    def __getattr__(self, name: str) -> Any:
        """``module.parametrizations.weight``, as code written for torch's weight norm reads it
        (``.original0`` is g, ``.original1`` is v)."""
        if not name.startswith("_") and name in self._names():
            return _Entry(self.__dict__["_owner"], name)
        return super().__getattr__(name)

    def __delitem__(self, key: str) -> None:
        owner = self.__dict__["_owner"]
        raise WeightNormError(
            f"{_kind(owner)}.parametrizations is a view of weightnorm's weight norms; "
            f"remove one with wn.remove_weight_norm(module, {key!r}) or "
            f"parametrize.remove_parametrizations(module, {key!r})"
        )


class _Entry:
    """``module.parametrizations[name]`` for a name this library normalizes: what
    ``remove_parametrizations`` reads, and ``original0`` (g) and ``original1`` (v), as torch's
    parametrize weight norm names them (code written for it reads them)."""

    is_tensor = True  # torch's path that keeps the Parameter object (see the module docstring)

    def __init__(self, owner: nn.Module, name: str) -> None:
        self._owner, self._name = owner, name

    @property
    def original0(self) -> Tensor:
        """``<name>_g``."""
        return cast(Tensor, getattr(self._owner, self._name + "_g"))

    @property
    def original1(self) -> Tensor:
        """``<name>_v``."""
        return cast(Tensor, getattr(self._owner, self._name + "_v"))

    @property
    def original(self) -> Tensor:
        """``v``; reading it begins torch's removal (see the module docstring)."""
        return _Removal(self._owner, self._name).begin()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise WeightNormError(_fold_first(self._owner, self._name))


class _Removal:
    """One run of ``remove_parametrizations(module, name)`` on this library's weight norm; see
    the module docstring for the sequence it follows. While it runs the module is in a class of
    its own (a subclass of the one it had) whose ``<name>`` removes the weight norm when read,
    and whose ``parametrizations`` is this object."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name, self.cls = module, name, type(module)
        self.done = False

    def begin(self) -> Tensor:
        self.module.__class__ = self._transient(self.cls)
        return cast(Tensor, self.module._parameters[self.name + "_v"])

    def _transient(self, base: type) -> type:
        namespace = {
            self.name: property(self._read),
            "parametrizations": property(self._view, None, self._keep),
        }
        return type(base.__name__, (base,), namespace)

    def _read(self, module: nn.Module) -> Tensor:
        """Torch's read of ``module.<name>``: the removal itself."""
        if not self.done:
            module.__class__ = self.cls
            _remove(module, self.name)
            self.done = True
            module.__class__ = self._transient(type(module))
        return cast(Tensor, module._parameters[self.name])

    def _view(self, module: nn.Module) -> _Removal:
        return self  # (not a ModuleDict: is_parametrized(module) is False)

    def _keep(self, module: nn.Module) -> None:
        """Torch's ``delattr(module, "parametrizations")``: nothing to delete."""

    def __delitem__(self, key: str) -> None:
        """Torch's ``del module.parametrizations[name]``: with ``leave_parametrized=False`` the
        weight was never read, so the weight norm is still there."""
        if not self.done:
            self.module.__class__ = self.cls
            raise WeightNormError(
                f"remove_parametrizations(module, {self.name!r}, leave_parametrized=False) would "
                f"leave v, the direction, as {_kind(self.module)}.{self.name}; weightnorm "
                "removes a weight norm by folding g * v/||v|| into the weight: use "
                "leave_parametrized=True, wn.remove_weight_norm(module, "
                f"{self.name!r}), or wn.fold(model)"
            )
