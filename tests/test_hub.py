"""`hub.push=true`: the startup checks (offline, no token, a token the Hub refuses or that cannot write, bad repo
ids), and the upload of a real demo run against a recording stand-in for `HfApi`.

The real upload is not exercised here (the tests have no network): the stand-in records the calls
`huggingface_hub.HfApi` would receive (`create_repo`, then one `create_commit`) and the bytes of every file.
"""

import re
from types import SimpleNamespace

import pytest

from helpers import CPU, compose, typed

WRITE = {"name": "me", "auth": {"accessToken": {"role": "write"}}}


class RecordingHub:
    """`HfApi.whoami/create_repo/create_commit` that record what they are given and what exists on disk then."""

    def __init__(self, monkeypatch, who=WRITE, fail_commit=None):
        from huggingface_hub import HfApi, constants

        self.repos, self.commits, self.who, self.fail_commit = [], [], who, fail_commit
        self.watch = None  # an output folder whose checkpoints each commit notes
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
        monkeypatch.setattr(HfApi, "whoami", lambda api, token=None, **kw: self._whoami())
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: self._create_repo(repo_id, **kw))
        monkeypatch.setattr(HfApi, "create_commit", lambda api, **kw: self._create_commit(**kw))

    def _whoami(self):
        if isinstance(self.who, Exception):
            raise self.who
        return self.who

    def _create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        self.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return f"https://huggingface.co/{repo_id}"

    def _create_commit(self, repo_id, operations, commit_message, **kw):
        if self.fail_commit:
            raise self.fail_commit
        files = {}
        for op in operations:
            with op.as_file() as handle:
                files[op.path_in_repo] = handle.read()
        checkpoints = sorted(p.name for p in (self.watch / "checkpoints").glob("*.ckpt")) if self.watch else None
        self.commits.append({"repo_id": repo_id, "files": files, "message": commit_message,
                             "checkpoints": checkpoints})


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A 2-step demo run (validation at 64 px: rounds at steps 0 and 2) with hub.push=true."""
    from simpletuner_pl.train import run

    monkeypatch = pytest.MonkeyPatch()
    hub = RecordingHub(monkeypatch)
    out = tmp_path_factory.mktemp("hub") / "run"
    hub.watch = out
    try:
        trainer = run(compose(
            "experiment=demo", "data.datasets.demo.resolution=64", f"data.cache_dir={out / 'cache'}",
            f"output_dir={out}", "train.max_steps=2", "validation=demo", "validation.resolutions=64x64",
            "validation.num_inference_steps=2", "validation.every_n_steps=2", "hub.push=true",
            "hub.repo_id=me/demo-lora", CPU))
    finally:
        monkeypatch.undo()
    return out, trainer, hub


def test_push_uploads_the_adapter_card_and_images_in_one_commit(pushed):
    out, trainer, hub = pushed
    assert hub.repos == [{"repo_id": "me/demo-lora", "private": True, "exist_ok": True}]
    [commit] = hub.commits
    assert commit["repo_id"] == "me/demo-lora" and commit["message"] == "simpletuner_pl: 2 steps"
    assert commit["checkpoints"] == ["last.ckpt", "step=2.ckpt"]  # pushed after the final checkpoint was written
    images = sorted(p.name for p in (out / "validation" / "step_2").glob("*-*x*.png"))
    assert images == ["astronaut-64x64.png", "rocket-64x64.png", "validation-64x64.png"]
    assert sorted(commit["files"]) == sorted(["README.md", "pytorch_lora_weights.safetensors",
                                              *(f"validation/step_{s}/{name}" for s in (0, 2) for name in images)])
    for name, content in commit["files"].items():
        if name != "README.md":
            local = out / ("adapter" if name.endswith(".safetensors") else "") / name
            assert content == local.read_bytes(), name
    card, local_card = commit["files"]["README.md"].decode(), (out / "adapter" / "README.md").read_text()
    assert "](validation/step_0/validation-64x64.png)" in card and "../validation/" not in card
    assert "base_model: tiny random-init" in local_card and "base_model:" not in card  # not a Hub id
    assert "- trained steps: 2" in card  # the final card, written before the push
    unchanged = re.sub(r"^base_model: .*\n", "", local_card, count=1, flags=re.MULTILINE)
    assert card.replace("](validation/", "](../validation/") == unchanged


def test_intermediate_and_best_adapters_stay_local(tmp_path):
    from simpletuner_pl.hub import upload_files

    for name in ("pytorch_lora_weights.safetensors", "README.md", "step_100/pytorch_lora_weights.safetensors",
                 "best/pytorch_lora_weights.safetensors", "best/best.json", "transformer/config.json"):
        (tmp_path / "adapter" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "adapter" / name).write_text(name)
    (tmp_path / "adapter" / "README.md").write_text("---\nbase_model: black-forest-labs/FLUX.1-dev\n---\n")
    files = upload_files(tmp_path)
    assert sorted(files) == ["README.md", "pytorch_lora_weights.safetensors", "transformer/config.json"]
    assert files["README.md"] == b"---\nbase_model: black-forest-labs/FLUX.1-dev\n---\n"  # a Hub id stays


def test_a_failed_upload_says_the_run_is_saved_and_how_to_upload(pushed, monkeypatch):
    from simpletuner_pl.callbacks.hub_push import HubPush
    from simpletuner_pl.errors import UserError

    out, _, _ = pushed
    RecordingHub(monkeypatch, fail_commit=OSError("connection reset"))
    callback = HubPush(typed("hub.push=true", "hub.repo_id=me/demo-lora").hub, out)
    fake_trainer = SimpleNamespace(is_global_zero=True, interrupted=False, global_step=2)
    with pytest.raises(UserError, match=r"training finished and is saved in .*connection reset.*hf upload "
                                        r"me/demo-lora .*adapter \. --exclude 'step_\*' --exclude 'best/\*' --private"):
        callback.on_fit_end(fake_trainer, None)
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_offline_is_refused_before_training(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.train import run

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"HF_HUB_OFFLINE=1 is set: unset it .*or hub.push=false"):
        run(compose("experiment=demo", f"output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                    "hub.push=true", "hub.repo_id=me/demo-lora", CPU))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_no_token_is_refused_with_the_login_command(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.hub import check_push

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"not logged in to the Hugging Face Hub: run `hf auth login`.*HF_TOKEN"):
        check_push(typed("hub.push=true", "hub.repo_id=me/demo-lora").hub)


@pytest.mark.parametrize("who, message", [
    (OSError("Name or service not known"), r"did not accept the token \(OSError: Name or service not known\)"),
    ({"name": "me", "auth": {"accessToken": {"role": "read"}}}, r"token of me is read-only: create a write token"),
])
def test_a_token_the_hub_refuses_or_that_cannot_write_is_refused(monkeypatch, who, message):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.hub import check_push

    RecordingHub(monkeypatch, who=who)
    with pytest.raises(ConfigError, match=message):
        check_push(typed("hub.push=true", "hub.repo_id=me/demo-lora").hub)


def test_repo_id_is_required_and_checked(monkeypatch):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.hub import check_push

    hub = RecordingHub(monkeypatch)
    with pytest.raises(ConfigError, match=r"hub.push=true needs hub.repo_id=<user or org>/<name>"):
        check_push(typed("hub.push=true").hub)
    with pytest.raises(ConfigError, match=r"hub.repo_id='me/a/b' is not a Hub repo id"):
        check_push(typed("hub.push=true", "hub.repo_id=me/a/b").hub)
    check_push(typed("hub.push=true", "hub.repo_id=me/demo-lora", "hub.private=false").hub)
    check_push(typed("hub.repo_id=me/a/b").hub)  # hub.push=false checks nothing
    assert hub.repos == [] and hub.commits == []
