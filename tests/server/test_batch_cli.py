"""`cormorant batch run`: a batch file answered offline, with a progress bar, and the same
answers as the server gives the same requests one by one (temperature 0)."""
from __future__ import annotations

import json

from cormorant.cli import main


def test_batch_run_offline_matches_the_server(tiny_llama, client, tmp_path, capsys):
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "any", "prompt": f"Number {i} is", "max_tokens": 3 + i % 6,
                       "temperature": 0}} for i in range(12)]
    lines.append({"custom_id": "too-long", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "any", "prompt": "x", "max_tokens": 100_000}})
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code = main(["batch", "run", str(source), "-o", str(output), "--model", tiny_llama,
                 "--concurrency", "4"])
    assert code == 1  # one line failed, and says so
    err = capsys.readouterr().err
    assert "13/13" in err and "tok/s" in err and "ETA" in err
    assert "12 of 13 lines answered, 1 failed" in err
    results = [json.loads(x) for x in output.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [line["custom_id"] for line in lines]
    assert results[-1]["response"]["status_code"] == 400
    model = client.models.list().data[0].id
    for line, result in zip(lines[:-1], results):
        assert result["response"]["status_code"] == 200
        one = client.completions.create(**{**line["body"], "model": model})
        assert result["response"]["body"]["choices"][0]["text"] == one.choices[0].text


def test_batch_run_refuses_a_bad_file_naming_the_line(tiny_llama, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
                      '"body": {"model": "m", "prompt": "hi"}}\n{"custom_id": "b"}\n')
    assert main(["batch", "run", str(source), "-o", str(tmp_path / "o"),
                 "--model", tiny_llama]) == 2
    assert "Line 2 of the batch file is invalid" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_serve_refuses_a_malformed_data_key_and_puts_files_beside_the_usage_db(
        monkeypatch, capsys, tmp_path):
    import argparse

    from cormorant.server.launch import add_serve_args, batch_settings
    from cormorant.server.launch import main as launch_main

    monkeypatch.setenv("CORMORANT_DATA_KEY", "too-short")
    assert launch_main(["--model", "/nonexistent"]) == 2  # before any model is loaded
    assert "CORMORANT_DATA_KEY must be base64 of 32" in capsys.readouterr().err
    monkeypatch.delenv("CORMORANT_DATA_KEY")
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(["--usage-db", str(tmp_path / "usage.db")])
    assert batch_settings(args)["files_dir"] == str(tmp_path / "files")
