from types import ModuleType

import fastgate


def test_all_public_names_are_exported() -> None:
    # submodules that importing the package brings in are not API names
    public = {
        name
        for name in dir(fastgate)
        if not name.startswith("_") and not isinstance(getattr(fastgate, name), ModuleType)
    }
    assert public <= set(fastgate.__all__)
    assert fastgate.__all__ == sorted(fastgate.__all__)
    for name in fastgate.__all__:
        assert hasattr(fastgate, name), name
