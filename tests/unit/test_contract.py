"""The data contract loader: shipped contracts load; mistakes name file and field."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.contract import ContractError, load_contract, load_contracts
from tests.conftest import CONTRACTS

GOOD = {
    "name": "toy",
    "task": "classification",
    "id": "id",
    "event_time": "ts",
    "label": {"name": "y", "classes": [0, 1]},
    "features": [
        {"name": "age", "type": "float", "min": 0, "max": 120, "description": "age", "owner": "me"},
        {"name": "n", "type": "int", "nullable": True},
        {"name": "sex", "type": "category", "values": [1, 2]},
        {"name": "flag", "type": "bool"},
    ],
    "groups": ["sex"],
}


def write(tmp_path: Path, data: object, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_shipped_contracts_load() -> None:
    contracts = load_contracts(CONTRACTS)
    assert set(contracts) == {"census_employment", "car_loan", "iris", "diabetes"}
    census = contracts["census_employment"]
    assert len(census.features) == 16
    assert census.groups == ["SEX", "RAC1P"]
    assert census.feature("SEX").values == ["1", "2"]
    assert census.label.classes == [0, 1]
    iris = contracts["iris"]
    assert iris.feature_names[0] == "sepal length (cm)"  # scikit-learn's own names
    assert iris.label.classes == ["virginica", "setosa", "versicolor"]  # not sorted, on purpose
    assert iris.training.min_rows <= 100  # trains on the 100 reference rows
    diabetes = contracts["diabetes"]
    assert diabetes.task == "regression"
    assert diabetes.label.name == "disease_progression"
    assert diabetes.training.min_rows <= 300


def test_good_contract_defaults(tmp_path: Path) -> None:
    contract = load_contract(write(tmp_path, GOOD))
    assert contract.feature_names == ["age", "n", "sex", "flag"]
    assert contract.feature("sex").values == ["1", "2"]  # values normalised to strings
    assert contract.promotion.strategy == "direct"
    assert contract.feature("age").owner == "me"
    # Evidently's default for its normed Wasserstein drift score, in both verdicts.
    assert contract.validation.wasserstein_threshold == 0.1
    assert contract.monitoring.drift_wasserstein_threshold == 0.1


def mutate(**changes: object) -> dict[str, object]:
    data = {**GOOD, **changes}
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (mutate(task="clustering"), "task", "classification"),
        (mutate(id=None), "id", "Field required"),
        (
            mutate(features=[{"name": "c", "type": "category"}]),
            "features.0",
            "non-empty 'values'",
        ),
        (
            mutate(features=[{"name": "a", "type": "float", "min": 5, "max": 1}]),
            "features.0",
            "greater than max",
        ),
        (
            mutate(features=[{"name": "a", "type": "float", "colour": "red"}]),
            "features.0.colour",
            "Extra",
        ),
        (mutate(features=[{"name": "a", "type": "text"}]), "features.0.type", "float"),
        (mutate(groups=["nope"]), "(top level)", "'nope' is not a feature"),
        (mutate(label={"name": "y", "classes": [1]}), "(top level)", "at least two classes"),
        (mutate(features=[]), "features", "at least 1"),
        (mutate(promotion={"strategy": "yolo"}), "promotion.strategy", "direct"),
        (
            mutate(validation={"wasserstein_threshold": -1}),
            "validation.wasserstein_threshold",
            "greater than or equal to 0",
        ),
    ],
)
def test_bad_contract_names_file_and_field(
    tmp_path: Path, data: dict[str, object], field: str, words: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ContractError) as err:
        load_contract(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}"), message
    assert words in message


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, name="other")
    with pytest.raises(ContractError, match=r"other\.yaml: name: 'toy' must match"):
        load_contract(path)


def test_broken_yaml_and_non_mapping(tmp_path: Path) -> None:
    broken = tmp_path / "toy.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ContractError, match=r"toy\.yaml: \(yaml\)"):
        load_contract(broken)
    broken.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ContractError, match=r"toy\.yaml: \(top level\): expected a mapping"):
        load_contract(broken)


def test_validator_messages_carry_no_pydantic_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, mutate(features=[{"name": "a\u0007", "type": "float"}]))
    with pytest.raises(ContractError) as err:
        load_contract(path)
    assert str(err.value) == f"{path}: features.0.name: 'a\\x07' has a control character ('\\x07')"


def _bad_folder(tmp_path: Path) -> Path:
    """The shipped contracts plus one whose feature name holds a tab."""
    folder = tmp_path / "contracts"
    folder.mkdir()
    for path in CONTRACTS.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    write(folder, mutate(features=[{"name": "tab\there", "type": "float"}]))
    return folder


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).parent / "flywheel"), "up"],
        [sys.executable, "-m", "services.ingestion"],
    ],
    ids=["flywheel-up", "ingestion"],
)
def test_one_bad_contract_stops_start_up_with_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    folder = _bad_folder(tmp_path)
    env = {**os.environ, "FLYWHEEL_CONTRACTS": str(folder), "KAFKA_BOOTSTRAP_SERVERS": ""}
    done = subprocess.run(
        [*command, *(["--log-dir", str(tmp_path / "logs")] if command[-1] == "up" else [])],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {folder / 'toy.yaml'}: features.0.name: 'tab\\there' has a "
        "control character ('\\t')"
    ], lines
    assert not (tmp_path / "logs" / "broker.log").exists()  # nothing was started


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read"):
        load_contract(tmp_path / "absent.yaml")
    with pytest.raises(ContractError, match="not a folder"):
        load_contracts(tmp_path / "absent")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"id": "age"}, "id: 'age' is also a feature or the label"),
        ({"event_time": "y"}, "event_time: 'y' is also a feature or the label"),
        ({"event_time": "id"}, "event_time: 'id' is also the id"),
    ],
)
def test_id_and_event_time_are_columns_of_their_own(
    tmp_path: Path, changes: dict[str, object], words: str
) -> None:
    with pytest.raises(ContractError, match=re.escape(f"(top level): {words}")):
        load_contract(write(tmp_path, mutate(**changes)))
