"""Uploading a finished run's model to the Hugging Face hub (`push_to_hub`, `hub_model_id`, as in TRL)."""

from __future__ import annotations

from pathlib import Path

from .errors import RunError, one_line


def push_model(folder: Path, repo_id: str, commit_message: str) -> str:
    """Create `repo_id` if needed and upload every file of `folder` to it; returns the repository's URL.
    A name without a user goes under the account of the logged-in token (`hf auth login`)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), commit_message=commit_message)
    except Exception as exc:  # noqa: BLE001: network, auth and permission errors come as many types
        raise RunError(f"push_to_hub: uploading {folder} to {repo_id} failed ({type(exc).__name__}: "
                       f"{one_line(exc)[:200]}); the model is kept in {folder}") from exc
    return str(url)
