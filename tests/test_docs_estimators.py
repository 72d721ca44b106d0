"""docs/estimators.md's table says what the registry says.

Checked per row: the class cell is the constructor with every default
(``registry.signature``), the name cell lists exactly the names registered for
that class (presets included), and the unbiased, needs ∂f/∂z, temperature and
variables cells agree with the metadata. The family and evaluations columns are
prose and not checked. A failure prints the row the registry expects.
"""

from __future__ import annotations

import re
from pathlib import Path

from discograd.estimators import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "estimators.md"
HEADER = (
    "| class | name | family | unbiased | needs ∂f/∂z | temperature | variables "
    "| evaluations of f per data point |"
)


def _table() -> list[list[str]]:
    lines = DOC.read_text().splitlines()
    assert HEADER in lines, f"{DOC.name}: the estimator table's header changed; expected {HEADER}"
    rows = []
    for line in lines[lines.index(HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _expected_row(name: str) -> str:
    e = registry.info(name)
    names = [name, *(p.name for p in registry.infos() if p.preset_of == name)]
    unbiased = "exact" if e.exact else ("yes" if e.unbiased else "no")
    kinds = "both" if len(e.supports) == 2 else next(iter(e.supports)).replace("b", "B", 1)
    cells = [
        f"`{registry.signature(name)}`",
        ", ".join(f"`{n}`" for n in names),
        "FAMILY",
        unbiased,
        "yes" if e.needs_grad_f else "no",
        "schedule" if e.has_temperature else "—",
        kinds,
        "EVALUATIONS",
    ]
    return "| " + " | ".join(cells) + " |"


def test_the_table_lists_every_registered_name_once():
    listed = [n for row in _table() for n in re.findall(r"`([a-z0-9_]+)`", row[1])]
    missing = [n for n in registry.names() if n not in listed]
    assert not missing, (
        "missing from docs/estimators.md:\n"
        + "\n".join(_expected_row(n) for n in missing if registry.info(n).preset_of is None)
        + f"\n(presets {[n for n in missing if registry.info(n).preset_of]} go in their class row)"
    )
    extra = [n for n in listed if n not in registry.names()]
    assert not extra, f"docs/estimators.md lists unregistered names {extra}"
    assert len(listed) == len(set(listed)), f"a name is listed twice: {listed}"


def test_each_row_agrees_with_the_metadata():
    for row in _table():
        names = re.findall(r"`([a-z0-9_]+)`", row[1])
        head = next(n for n in names if registry.info(n).preset_of is None)
        e = registry.info(head)
        want = _expected_row(head)
        where = f"docs/estimators.md row of {head}: {row}\nthe registry says: {want}"
        assert row[0] == f"`{registry.signature(head)}`", where
        presets = {p.name for p in registry.infos() if p.preset_of == head}
        assert set(names) == {head} | presets, where
        if e.exact:
            assert row[3] == "exact", where
        else:
            assert row[3].split()[0] == ("yes" if e.unbiased else "no"), where
        assert row[4].split()[0] == ("yes" if e.needs_grad_f else "no"), where
        assert row[5].startswith("schedule") == e.has_temperature, where
        kinds = {"both": {"bernoulli", "categorical"}}.get(row[6], {row[6].lower()})
        assert kinds == set(e.supports), where


def test_the_order_is_the_registry_order():
    order = [re.findall(r"`([a-z0-9_]+)`", row[1])[0] for row in _table()]
    assert order == registry.names(presets=False)
