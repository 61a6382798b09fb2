"""docs/method.md is the user's copy of the method: generated from the config classes, never stale."""
from sweeps import method_doc
from vtp_core.cfg import field_docs


def test_method_doc_is_up_to_date():
    on_disk = (method_doc.REPO / "docs" / "method.md").read_text()
    assert on_disk == method_doc.render(), "docs/method.md is stale: run `python -m sweeps.method_doc`"


def test_every_field_says_where_its_value_comes_from():
    for _, cls in method_doc.SECTIONS:
        for name, _, md in field_docs(cls):
            assert md.get("source") or name.startswith("data."), f"{cls.__name__}.{name} has no source"
            assert "METHOD" not in md.get("source", ""), f"{cls.__name__}.{name} cites a file users do not have"
