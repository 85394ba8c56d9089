"""The frozen-config base: dict/JSON round-trip, field checks, tuples and nested configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fastddpm import DiffusionConfig, FittedTimesteps, UnetConfig
from fastddpm.compiler import CompileConfig
from fastddpm.config import ConfigError, FrozenConfig
from fastddpm.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Inner(FrozenConfig):
    name: str
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")


@dataclasses.dataclass(frozen=True)
class Outer(FrozenConfig, json_indent=2, json_sort_keys=False):
    inner: Inner
    grid: tuple[tuple[int, ...], ...] = ((1, 2), (3,))
    pair: tuple[str, float] = ("a", 0.5)
    maybe: Inner | None = None
    either: str | tuple[float, ...] = "linear"
    count: int = 3


@dataclasses.dataclass(frozen=True)
class Child(Outer):
    extra: bool = False


def full() -> Outer:
    return Outer(Inner("x", (4, 5, 6)), grid=((7,), (8, 9)), pair=("b", 1.5), maybe=Inner("y"),
                 either=(0.25, 0.5), count=7)


def test_round_trip_restores_tuples_and_nested_configs():
    config = full()
    plain = config.to_dict()
    assert plain == {"inner": {"name": "x", "sizes": [4, 5, 6]}, "grid": [[7], [8, 9]], "pair": ["b", 1.5],
                     "maybe": {"name": "y", "sizes": [1, 2]}, "either": [0.25, 0.5], "count": 7}
    assert json.loads(json.dumps(plain)) == plain  # plain JSON values only
    back = Outer.from_json(config.to_json())
    assert back == config
    assert type(back.inner) is Inner and type(back.maybe) is Inner
    assert back.grid == ((7,), (8, 9)) and all(type(row) is tuple for row in back.grid)
    assert type(back.pair) is tuple and type(back.either) is tuple
    assert Outer.from_dict({"inner": {"name": "z"}}) == Outer(Inner("z"))
    assert Outer.from_dict({"inner": {"name": "z"}, "maybe": None, "either": "cosine"}).either == "cosine"


def test_json_layout_keywords_are_inherited():
    text = full().to_json()
    assert text.startswith('{\n  "inner"') and list(json.loads(text)) == [f.name for f in dataclasses.fields(Outer)]
    child = Child(Inner("c"), extra=True)
    assert child.to_json().startswith('{\n  "inner"')
    assert Child.from_json(child.to_json()) == child
    assert Inner("q").to_json() == '{"name": "q", "sizes": [1, 2]}'  # the default: one line, sorted keys


def test_unknown_fields_are_named():
    with pytest.raises(ConfigError, match=r"unknown Outer field\(s\) \['colour', 'size'\]"):
        Outer.from_dict({"inner": {"name": "x"}, "size": 1, "colour": 2})
    with pytest.raises(ValueError, match=r"unknown Inner field\(s\) \['nmae'\]"):  # also inside a nested config
        Outer.from_dict({"inner": {"nmae": "x"}})


def test_missing_required_fields_are_named():
    with pytest.raises(ConfigError, match=r"missing Outer field\(s\) \['inner'\]"):
        Outer.from_dict({"count": 2})
    with pytest.raises(ConfigError, match=r"missing Inner field\(s\) \['name'\]"):
        Outer.from_json('{"inner": {"sizes": [1]}}')


@pytest.mark.parametrize("data", [[], "inner", 3, None])
def test_non_dict_is_refused(data):
    with pytest.raises(ConfigError, match=r"Outer is read from a dict"):
        Outer.from_dict(data)
    with pytest.raises(ConfigError, match=r"Outer is read from a dict"):
        Outer.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["", "{", "{'inner': 1}", "[" * 100000 + "]" * 100000])
def test_bad_json_is_a_value_error(text):
    with pytest.raises(ConfigError, match="must be JSON"):
        Outer.from_json(text)
    assert issubclass(ConfigError, ValueError)


def test_post_init_validation_runs_on_what_is_read():
    with pytest.raises(ValueError, match="name must not be empty"):
        Outer.from_dict({"inner": {"name": ""}})


def test_configs_are_frozen_and_subclasses_must_be():
    config = full()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.count = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        @dataclasses.dataclass
        class Loose(FrozenConfig):
            x: int = 0


FIT = dict(timesteps=(40, 20, 3), method="dpmsolver++", order=2, num_train_steps=50, start="logsnr",
           teacher_steps=100, start_error=0.5, error=0.25, heldout_start_error=0.5, heldout_error=0.3,
           evaluations=12, seconds=1.0)


@pytest.mark.parametrize("config", [
    UnetConfig(dim=8, channels=1, dim_mults=(1, 2)),
    DiffusionConfig(5, (0.1, 0.2, 0.3, 0.4, 0.5)),
    CompileConfig(mode="max-autotune", freezing=False),
    TrainConfig(data="digits", image_size=8, model=UnetConfig(dim=8, channels=1, dim_mults=(1, 2)),
                diffusion=DiffusionConfig(50, "cosine")),
    FittedTimesteps(**FIT),
], ids=lambda c: type(c).__name__)
def test_library_configs_use_the_base(config):
    cls = type(config)
    assert isinstance(config, FrozenConfig)
    assert cls.from_json(config.to_json()) == config
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=f"unknown {cls.__name__} field"):
        cls.from_dict({**config.to_dict(), "bogus": 1})


def test_serialized_layouts_are_unchanged():
    # Checkpoints and fit files on disk were written with these layouts.
    assert UnetConfig(dim=8).to_json() == (
        '{"channels": 3, "convnext_mult": 2, "dim": 8, "dim_mults": [1, 2, 4, 8], "init_dim": null, '
        '"out_dim": null, "resnet_block_groups": 8, "use_convnext": true, "with_time_emb": true}')
    assert DiffusionConfig(3, (0.1, 0.2, 0.3)).to_dict() == {"timesteps": 3, "beta_schedule": [0.1, 0.2, 0.3]}
    fit = FittedTimesteps(**FIT)
    assert fit.to_json() == json.dumps({**FIT, "timesteps": [40, 20, 3]}, indent=1)
    train = TrainConfig(data="digits").to_dict()
    assert train["model"] == UnetConfig(dim=28, channels=1, dim_mults=(1, 2, 4)).to_dict()
    assert train["diffusion"] == {"timesteps": 200, "beta_schedule": "linear"}


def test_fit_from_another_file_is_named_so():
    with pytest.raises(ValueError, match=r"not a fastddpm timestep fit \(missing FittedTimesteps field"):
        FittedTimesteps.from_json('{"timesteps": [3, 2]}')
    with pytest.raises(ValueError, match=r"not a fastddpm timestep fit \(unknown FittedTimesteps field"):
        FittedTimesteps.from_dict({**FIT, "note": "x"})
