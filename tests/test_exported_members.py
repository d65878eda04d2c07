import fastgate


def test_all_public_names_are_exported() -> None:
    public = {name for name in dir(fastgate) if not name.startswith("_")} - {
        # submodules that importing the package brings in
        "app",
        "config",
        "exceptions",
        "observability",
        "proxy",
        "routing",
        "upstream",
        "cli",
        "server",
        "serving",
        "integrations",
        "plugins",
    }
    assert public <= set(fastgate.__all__)
    assert fastgate.__all__ == sorted(fastgate.__all__)
    for name in fastgate.__all__:
        assert hasattr(fastgate, name), name
