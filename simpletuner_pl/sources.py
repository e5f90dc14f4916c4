"""Where weights come from: a hub id or a local folder, checked before anything is read.

`check_source` turns the usual failures (typo in a path, gated repo, no network, wrong subfolder) into one
`ModelSourceError` that says what to do, instead of a traceback ten seconds into loading. The model families,
quantisation, the CLIP scorer and the preview decoder all name their sources with `Source` and check them here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from simpletuner_pl.errors import ModelSourceError

BASE_KEY = "model.pretrained_model_name_or_path"
HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Source:
    what: str  # the component(s), named in errors
    location: str  # hub id or folder
    subfolder: Optional[str]
    filename: str  # a file that must exist there (model_index.json, config.json)
    key: str = BASE_KEY  # the config key that sets `location`, named in errors


def subfolder(value: Optional[str]) -> Optional[str]:
    """SimpleTuner writes `none` for "the weights are at the repo root"."""
    return None if value in (None, "", "none", "None") else value


def component_source(base: str, override: Optional[str], override_subfolder: Optional[str],
                     default_subfolder: str) -> Tuple[str, Optional[str]]:
    """(location, subfolder) of one component: the override with its own subfolder, else the base's folder."""
    return (override, subfolder(override_subfolder)) if override else (base, default_subfolder)


def pipeline_sources(what: str, base: str, overrides: Sequence[Tuple[str, Optional[str], Optional[str], str]]
                     ) -> List[Source]:
    """The base pipeline (its `model_index.json`) and every component override that is set: (what, location,
    subfolder, config key) each, with the component's own `config.json`."""
    found = [Source(what, base, None, "model_index.json")]
    found += [Source(name, location, subfolder(sub), "config.json", key) for name, location, sub, key in overrides
              if location]
    return found


def looks_like_path(location: str) -> bool:
    return (location.startswith(("/", "./", "../", "~")) or location.count("/") != 1
            or (os.sep != "/" and os.sep in location))


def check_source(source: Source, revision: Optional[str] = None) -> None:
    if not source.location:
        raise ModelSourceError(f"no location given for the {source.what}: set {source.key}")
    local = Path(source.location).expanduser()
    relative = f"{source.subfolder}/{source.filename}" if source.subfolder else source.filename
    if local.is_dir():
        if not (local / relative).is_file() and relative.endswith(".safetensors"):  # a weights file, not a folder
            raise ModelSourceError(f"{source.key}: there is no {local / relative} for the {source.what}")
        if not (local / relative).is_file():
            raise ModelSourceError(
                f"{local} has no {relative}, so it is not a diffusers folder for the {source.what}. Point at a "
                "folder written by `save_pretrained` (or `hf download <repo> --local-dir DIR`), or fix the "
                "subfolder override.")
        return
    if looks_like_path(source.location):
        raise ModelSourceError(f"model folder {source.location} (for the {source.what}) does not exist")
    _check_hub(source, relative, revision)


def hub_unreachable(repo: str, timeout_s: float = HUB_TIMEOUT_S) -> Optional[str]:
    """Why the hub cannot be reached right now (one HEAD request, no retries), or None. huggingface_hub's own
    download retries a silent network for minutes (measured: 6.5 min against a host that never answers)."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    if constants.HF_HUB_OFFLINE:
        return None  # the download answers at once from the local cache
    request = urllib.request.Request(f"{constants.ENDPOINT}/api/models/{repo}", method="HEAD",
                                     headers=build_hf_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # the hub answered (401, 404, ...): the download says what it means
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err)) or type(err).__name__


def _check_hub(source: Source, relative: str, revision: Optional[str]) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = source.location
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    problem = hub_unreachable(repo)
    if problem is not None:
        raise ModelSourceError(f"cannot reach the Hugging Face Hub for {repo} within {HUB_TIMEOUT_S:g} s ({problem}); "
                               f"check the network, or pass a local folder as {source.key}")
    try:
        hf_hub_download(repo, source.filename, subfolder=source.subfolder, revision=revision)
    except GatedRepoError:
        raise ModelSourceError(f"{repo} is gated: accept its license at https://huggingface.co/{repo}, then {login}; "
                               "or download it elsewhere and pass the local folder") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{repo} is neither a local folder nor a hub repo you can see (private repos need you "
                               f"to {login})") from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{repo} has no revision {revision!r} (model.revision)") from None
    except LocalEntryNotFoundError as err:  # a subclass of EntryNotFoundError: catch it first
        raise ModelSourceError(
            f"cannot reach the Hugging Face Hub for {repo} ({type(err).__name__}; offline or HF_HUB_OFFLINE=1) and it "
            f"is not in the local cache. Run `hf download {repo}` on a connected machine (after `hf auth login` for "
            f"gated models such as FLUX.1), or pass a local folder as {source.key}.") from None
    except EntryNotFoundError:
        raise ModelSourceError(f"hub repo {repo} has no {relative}: check the subfolder override for the "
                               f"{source.what}") from None
    except OSError as err:  # network failures surface as OSError subclasses
        raise ModelSourceError(f"cannot reach the Hugging Face Hub for {repo} ({err}); pass a local folder "
                               "instead") from None


def local_folder(location: str, sub: Optional[str], revision: Optional[str]) -> Path:
    """A local diffusers folder, or the hub snapshot of just that subfolder (from the cache when offline)."""
    local = Path(location).expanduser()
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(location, revision=revision, allow_patterns=[f"{sub}/*"] if sub else None))
    return local / sub if sub else local
