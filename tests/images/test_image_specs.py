from __future__ import annotations

from pathlib import Path

import pytest

from tartarus.errors import InvalidRequestError
from tartarus.images.specs import DEFAULT_TEMPLATE, builtin_specs, load_spec_file
from tartarus.models.resources import Resources
from tartarus.models.template import TemplateSpec


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_file_and_default_name(tmp_path: Path) -> None:
    spec = load_spec_file(write(tmp_path, "apt: [curl]\npip: [requests]\n", "my-tpl.yaml"))
    assert spec.name == "my-tpl"
    assert spec.apt == ("curl",)
    assert spec.pip == ("requests",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\napt: [a\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\nbogus: 1\n", "field 'bogus': unknown field"),
        ("name: x\napt: 5\n", "field 'apt'"),
        ("name: Bad Name\n", "field 'name': Value error, must be 1-63 chars"),
        ("name: x\nfiles: {rel/path: hi}\n", "field 'files'"),
        ("name: x\nresources: {memory_mb: 1}\n", "field 'resources.memory_mb'"),
        ("name: x\nworkdir: tmp\n", "field 'workdir'"),
    ],
)
def test_invalid_files_give_one_line_naming_file_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidRequestError) as exc:
        load_spec_file(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ")
    assert expected in msg
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="no such file"):
        load_spec_file(tmp_path / "nope.yaml")


def test_hash_ignores_runtime_fields_but_not_build_inputs() -> None:
    base = TemplateSpec(name="a", apt=("curl", "git"))
    same = [
        TemplateSpec(name="b", apt=("git", "curl")),
        TemplateSpec(name="a", apt=("curl", "git"), env={"X": "1"}, workdir="/tmp"),
        TemplateSpec(
            name="a",
            apt=("curl", "git"),
            resources=Resources.model_validate({"memory_mb": 2048, "cpu": 2}),
        ),
        TemplateSpec(name="a", apt=("curl", "git"), description="d", preimport=("json",)),
    ]
    for other in same:
        assert other.content_hash() == base.content_hash()
    different = [
        TemplateSpec(name="a", apt=("curl",)),
        TemplateSpec(name="a", apt=("curl", "git"), pip=("numpy",)),
        TemplateSpec(name="a", apt=("curl", "git"), suite="trixie"),
        TemplateSpec(name="a", apt=("curl", "git"), files={"/etc/x": "y"}),
    ]
    hashes = {base.content_hash()} | {o.content_hash() for o in different}
    assert len(hashes) == 1 + len(different)
    assert base.content_hash() == TemplateSpec(name="a", apt=("curl", "git")).content_hash()


def test_builtin_specs() -> None:
    specs = builtin_specs()
    assert set(specs) == {"base", "python", "python-ds"}
    assert DEFAULT_TEMPLATE in specs
    assert all(s.description for s in specs.values())
    assert all(s.suite == "bookworm" for s in specs.values())
    assert "python3-pip" in specs["python"].apt
    ds = specs["python-ds"]
    assert set(ds.pip) == {"numpy", "pandas", "scikit-learn", "matplotlib"}
    assert ds.preimport == ("numpy", "pandas")
    assert ds.resources.memory_mb == 1024
    assert len({s.content_hash() for s in specs.values()}) == 3
    specs.pop("base")
    assert "base" in builtin_specs()  # callers get a copy
