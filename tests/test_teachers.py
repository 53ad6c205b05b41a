"""Teacher lookup: what ``--teacher`` names, the ``unet/`` subfolder rule, config-only topology, clear errors."""

import pytest
import torch

from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.topology import load_unet, topology_of, unet_subfolder
from blocksearch.teachers import load_teacher, resolve_teacher, teacher_kind
from blocksearch.toy.assets import ASSETS
from tests.conftest import tiny_unet


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A pipeline-style folder (DIR/unet) and a bare U-Net folder of the same tiny U-Net."""
    tmp = tmp_path_factory.mktemp("teachers")
    unet = tiny_unet("sd-v2")
    unet.save_pretrained(tmp / "pipeline" / "unet")
    unet.save_pretrained(tmp / "unet_only")
    (tmp / "empty").mkdir()
    return tmp, unet


def test_unet_subfolder_rule(folders):
    tmp, _ = folders
    assert unet_subfolder(tmp / "pipeline") == "unet"
    assert unet_subfolder(tmp / "unet_only") is None
    with pytest.raises(BlocksearchError, match=r"--init .*empty has no unet/config.json or config.json; expected X"):
        unet_subfolder(tmp / "empty", what="--init", expected="X")


def test_load_unet_reads_both_layouts(folders):
    tmp, unet = folders
    for folder in ("pipeline", "unet_only"):
        again = load_unet(tmp / folder)
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), unet.state_dict().values()))


def test_teacher_kinds(folders):
    tmp, _ = folders
    assert [teacher_kind(s) for s in ("toy", "sd-v1", "sdxl", "owner/name", str(tmp / "pipeline"), str(ASSETS))] == [
        "toy", "architecture", "architecture", "hub", "folder", "toy-folder"]
    for spec in ("sd-v9", "/no/such/folder", "./relative", "a/b/c"):
        with pytest.raises(BlocksearchError, match=rf"unknown teacher '{spec}'.*allowed: toy, sd-v1"):
            teacher_kind(spec)


def test_topology_from_config_only(folders):
    tmp, unet = folders
    expected = topology_of(unet.config)
    assert resolve_teacher(str(tmp / "pipeline")).topology() == resolve_teacher(str(tmp / "unet_only")).topology() == expected
    assert resolve_teacher("toy").topology() == resolve_teacher(str(ASSETS)).topology()  # the toy config is the bundled teacher's
    assert resolve_teacher("sd-v1").topology().layers == (2, 2, 2, 2) and resolve_teacher("sdxl").topology().depth == (0, 2, 10)
    with pytest.raises(BlocksearchError, match="empty has no unet/config.json"):
        resolve_teacher(str(tmp / "empty")).topology()


def test_missing_teacher_is_a_clear_error():
    with pytest.raises(BlocksearchError, match="'nobody/no-such-model'.*offline"):
        load_teacher("nobody/no-such-model")
    with pytest.raises(BlocksearchError, match="/no/such/folder"):
        load_teacher("/no/such/folder")
    with pytest.raises(BlocksearchError, match="architecture without weights"):
        load_teacher("sd-v1")


def test_one_wording_for_a_hub_id_that_is_not_cached():
    messages = []
    for load in (load_teacher, lambda s: resolve_teacher(s).load_denoiser(), lambda s: resolve_teacher(s).topology()):
        with pytest.raises(BlocksearchError) as err:
            load("nobody/no-such-model")
        messages.append(str(err.value).rsplit(" (", 1)[0])  # less the exception type
    assert len(set(messages)) == 1 and "not in the local Hugging Face cache" in messages[0]


def test_teacher_folder_without_a_pipeline_is_refused(folders):
    tmp, _ = folders
    with pytest.raises(BlocksearchError, match="has no model_index.json"):
        load_teacher(str(tmp / "unet_only"))
    assert resolve_teacher(str(tmp / "unet_only")).load_denoiser().config.cross_attention_dim == 24
