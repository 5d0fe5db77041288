"""Progress on stderr: a tqdm bar in a terminal, bounded plain lines anywhere else (CI logs, pipes),
and the stages that report it."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import tty

from llm_parity import PROJECT_ROOT, download, progress
from llm_parity.logits import write_side_logits
from llm_parity.results import RunDir

PLAIN_LINE = re.compile(r"reference: generate (\d+)/2000 prompts \(\d+\.\d%\)(, [\d.]+ prompts/s, (ETA|in) \w+)?")


def stderr_of(code: str, *, terminal: bool, mode: str | None = None) -> str:
    """What `code` (with llm_parity.progress imported as `progress`) writes to stderr: a pipe, or an
    80-column pseudo-terminal in raw mode, so every carriage return in the text was written by the program."""
    env = {k: v for k, v in os.environ.items() if k != progress.MODE_VARIABLE}
    if mode:
        env[progress.MODE_VARIABLE] = mode
    script = f"import time\nfrom llm_parity import progress\n{code}"
    if not terminal:
        done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True,
                              timeout=60, check=True)
        return done.stderr.decode()  # bytes: text mode would turn each '\r' into '\n'
    main, child = pty.openpty()
    tty.setraw(child)
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=child) as process:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # Linux: EIO once the program has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0
    os.close(main)
    return b"".join(chunks).decode()


def assert_plain(text: str) -> list[str]:
    assert "\r" not in text and "\x1b" not in text
    assert text.endswith("\n")
    return text.splitlines()


def test_outside_a_terminal_a_large_total_prints_its_first_and_last_line_and_no_more():
    text = stderr_of("with progress.progress(2000, 'reference: generate', unit='prompts') as bar:\n"
                     "    for _ in range(2000): bar.advance()\n", terminal=False)
    lines = assert_plain(text)
    assert lines[0] == "reference: generate 0/2000 prompts (0.0%)"
    assert re.fullmatch(r"reference: generate 2000/2000 prompts \(100\.0%\), [\d.]+ prompts/s, in \d+s", lines[-1])
    assert len(lines) == 2  # all within one LINE_EVERY_S


def test_outside_a_terminal_lines_come_at_most_once_per_interval_with_rate_and_eta():
    text = stderr_of("progress.LINE_EVERY_S = 0.05\n"
                     "started = time.monotonic()\n"
                     "with progress.progress(2000, 'reference: generate', unit='prompts') as bar:\n"
                     "    for _ in range(40):\n"
                     "        time.sleep(0.01)\n"
                     "        bar.advance()\n"
                     "progress.note(f'elapsed {time.monotonic() - started}')\n", terminal=False)
    *lines, elapsed = assert_plain(text)
    assert all(PLAIN_LINE.fullmatch(line) for line in lines), lines
    assert 3 <= len(lines) <= 2 + float(elapsed.split()[1]) / 0.05
    done = [int(PLAIN_LINE.fullmatch(line).group(1)) for line in lines]
    assert done[0] == 0 and done[-1] == 40 and done == sorted(set(done))
    assert all(re.search(r", [\d.]+ prompts/s, ETA \w+$", line) for line in lines[1:])  # interrupted: no "in"


def test_a_total_of_zero_prints_nothing_and_divides_by_nothing():
    code = "with progress.progress(0, 'reference: generate') as bar:\n    bar.advance(0)\n"
    assert stderr_of(code, terminal=False) == ""
    assert stderr_of(code, terminal=True) == ""


def test_in_a_terminal_a_tqdm_bar_is_drawn():
    text = stderr_of("with progress.progress(50, 'reference: generate', unit='prompts') as bar:\n"
                     "    for _ in range(50): bar.advance()\n", terminal=True)
    assert "\r" in text
    assert re.search(r"reference: generate: 100%.*50/50 \[.*prompts/s\]", text)
    assert "(100.0%)" not in text  # not the plain lines


def test_the_mode_variable_forces_lines_in_a_terminal_and_a_bar_in_a_pipe():
    code = "with progress.progress(5, 'reference: generate', unit='prompts') as bar:\n    bar.advance(5)\n"
    assert assert_plain(stderr_of(code, terminal=True, mode="lines"))[-1].startswith("reference: generate 5/5 prompts")
    assert "\r" in stderr_of(code, terminal=False, mode="bar")


def test_a_note_during_a_bar_is_a_line_of_its_own():
    text = stderr_of("with progress.progress(3, 'reference: generate', unit='prompts') as bar:\n"
                     "    bar.advance()\n    progress.note('serve: stopping')\n    bar.advance(2)\n", terminal=True)
    assert re.search(r"(^|\r)serve: stopping\n", text)


def test_a_log_of_its_own_gets_plain_lines_even_in_a_terminal():
    text = stderr_of("lines = []\n"
                     "with progress.progress(4, 'target: logits', unit='positions', log=lines.append) as bar:\n"
                     "    bar.advance(4)\n"
                     "progress.note(repr(lines))\n", terminal=True)
    assert "\r" not in text.replace("\r\n", "\n")
    assert "'target: logits 4/4 positions (100.0%)" in text


def test_bytes_are_scaled():
    assert progress.byte_size(512) == "512 B"
    assert progress.byte_size(3 * 2**30 + 2**29) == "3.5 GiB"


def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(bytes(3 * 2**20))
    return folder


def test_hashing_a_large_model_reports_bytes_and_a_small_one_does_not(tmp_path, monkeypatch, capsys):
    folder = model_folder(tmp_path)
    monkeypatch.setenv(progress.MODE_VARIABLE, "lines")
    manifest = download.build_manifest(folder, source="local", repo_id="m", revision=None, resolved_revision=None)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(download, "HASH_PROGRESS_FROM_BYTES", 2**20)
    lines = []
    assert download.verify_folder(folder, manifest, log=lines.append) == []
    assert lines[0] == "model: sha256 0 B/3.0 MiB (0.0%)"
    assert re.fullmatch(r"model: sha256 3\.0 MiB/3\.0 MiB \(100\.0%\), [\d.]+ [KMGT]?i?B/s, in \d+s", lines[-1])
    assert download.build_manifest(folder, source="local", repo_id="m", revision=None,
                                   resolved_revision=None)["files"] == manifest["files"]
    assert "model: sha256 3.0 MiB/3.0 MiB (100.0%)" in capsys.readouterr().err



def test_hashing_through_progress_still_names_each_changed_file(tmp_path, monkeypatch):
    folder = model_folder(tmp_path)
    (folder / "tokenizer.json").write_text("{}")
    manifest = download.build_manifest(folder, source="local", repo_id="m", revision=None, resolved_revision=None)
    monkeypatch.setattr(download, "HASH_PROGRESS_FROM_BYTES", 0)
    (folder / "model.safetensors").write_bytes(bytes(3 * 2**20 - 1) + b"x")  # same size
    (folder / "tokenizer.json").write_text("{ }")  # another size
    assert download.verify_folder(folder, manifest, log=lambda line: None) == [
        f"{folder / name}: content differs from the manifest (sha256)" for name in ("model.safetensors", "tokenizer.json")]

def test_the_logits_stage_counts_positions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_VARIABLE, "lines")
    suite = {"sha256": "0" * 64, "passages": [{"id": "a", "ids": [1, 2, 3, 4]}, {"id": "b", "ids": [5, 6, 7]}]}
    write_side_logits(RunDir(tmp_path), "reference", suite, "1" * 64, positions=2, vocab_size=3,
                      fetch=lambda ids: [[0.0, 1.0, 2.0]] * (len(ids) - 1))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "reference: logits 0/4 positions (0.0%)"
    assert err[-1].startswith("reference: logits 4/4 positions (100.0%)")
