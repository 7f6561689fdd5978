"""large_files.yml: what ``python -m monai_cxrssl large-files`` writes, MONAI's ``download_large_files`` reads back
(fetching each file, checking its SHA-256); bad input is refused naming what was expected. A trained bundle's whole
round trip (train, publish, delete the weights, download, infer) is in ``test_bundles_metadata.py``."""

import shutil

import pytest

from monai.bundle import ConfigParser, download_large_files

from monai_cxrssl.__main__ import main
from monai_cxrssl.bundle_publish import LARGE_FILES, large_files
from monai_cxrssl.checkpoints import file_sha256
from monai_cxrssl.exceptions import CXRSSLError


@pytest.fixture
def trained(tmp_path):
    """A bundle folder whose models/ holds two weights files and the temporary of an interrupted write."""
    bundle = tmp_path / "my_bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").write_bytes(bytes(range(256)) * 40)
    (bundle / "models" / "model_info.json").write_text('{"backbone": "resnet18"}')
    (bundle / "models" / ".model.pt.abc.tmp").write_bytes(b"half")
    return bundle


def test_monai_downloads_and_checks_what_the_list_names(trained, tmp_path, capsys):
    host = tmp_path / "host" / "v1"  # where the user uploaded models/
    shutil.copytree(trained / "models", host)
    assert main(["large-files", str(trained), "--url-prefix", host.as_uri()]) == 0
    assert LARGE_FILES in capsys.readouterr().out
    listed = ConfigParser.load_config_file(str(trained / LARGE_FILES))["large_files"]  # YAML, read as MONAI does
    assert [e["path"] for e in listed] == ["models/model.pt", "models/model_info.json"]  # no temporary
    assert all(e["hash_type"] == "sha256" and e["hash_val"] == file_sha256(trained / e["path"]) for e in listed)
    assert listed[0]["url"] == f"{host.as_uri()}/model.pt"

    originals = {e["path"]: (trained / e["path"]).read_bytes() for e in listed}
    shutil.rmtree(trained / "models")
    download_large_files(bundle_path=str(trained))
    assert {p: (trained / p).read_bytes() for p in originals} == originals


def test_a_file_changed_after_publishing_is_refused(trained, tmp_path):
    host = tmp_path / "host"
    shutil.copytree(trained / "models", host)
    main(["large-files", str(trained), "--url-prefix", host.as_uri() + "/"])  # a trailing slash is one slash
    (host / "model.pt").write_bytes(b"other weights")
    shutil.rmtree(trained / "models")
    with pytest.raises(Exception, match="hash check"):
        download_large_files(bundle_path=str(trained))
    assert not (trained / "models" / "model.pt").exists()


@pytest.mark.parametrize("prefix", ["example.org/models", "ftp://example.org/models", "https://example.org"])
def test_a_url_prefix_that_is_not_a_folder_url_is_refused(trained, prefix):
    with pytest.raises(CXRSSLError, match="--url-prefix.*https://"):
        large_files(trained, prefix)


def test_an_untrained_bundle_is_refused_naming_its_weights_folder(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    assert main(["large-files", str(tmp_path / "b"), "--url-prefix", "https://example.org/b/models"]) == 1
    err = capsys.readouterr().err
    assert "holds no weights" in err and str(tmp_path / "b" / "models") in err
    assert not (tmp_path / "b" / LARGE_FILES).exists()
