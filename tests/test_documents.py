"""PDF pages and video frames as image sources: selection, rendering sizes, ask / chat / batch /
serve, and every bad input (truncated, encrypted, no pages, no frames, too many for a question).
PDFs are written by Pillow (or by hand, for the damaged kinds), videos by PyAV."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import load_reference, reference_generate

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images import load_image, load_images, load_source

COLOURS = [(200, 30, 30), (30, 160, 40), (20, 40, 200), (220, 200, 20), (120, 20, 160)]


def _pdf(path, count=5, size=(300, 400)):
    from PIL import Image, ImageDraw

    pages = []
    for i in range(count):
        page = Image.new("RGB", size, COLOURS[i % len(COLOURS)])
        ImageDraw.Draw(page).rectangle((20, 20, 120 + 30 * i, 160), fill=(255, 255, 255))
        pages.append(page)
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def _video(path, frames=30, rate=10, size=(64, 48)):
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), i * 8, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _audio_only(path):
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


def _hand_pdf(path, objects: list[bytes], trailer: bytes):
    """A PDF from raw objects with a correct xref table (for encrypted and empty documents)."""
    body, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    body += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    body += b"trailer\n" + trailer + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    path.write_bytes(bytes(body))
    return path


def _encrypted_pdf(path):
    key = b"<" + b"11" * 32 + b">"
    return _hand_pdf(path, [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
                            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 100 100]>>",
                            b"<</Filter/Standard/V 1/R 2/O " + key + b"/U " + key + b"/P -4>>"],
                     b"<</Root 1 0 R/Encrypt 4 0 R/ID[<0123456789abcdef0123456789abcdef><0123456789abcdef0123456789abcdef>]"
                     b"/Size 5>>")


def _empty_pdf(path):
    return _hand_pdf(path, [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[]/Count 0>>"],
                     b"<</Root 1 0 R/Size 3>>")


@pytest.fixture
def pdf(tmp_path):
    return _pdf(tmp_path / "report.pdf")


@pytest.fixture
def clip(tmp_path):
    return _video(tmp_path / "clip.mp4")


# -- the resolver ---------------------------------------------------------------------------------


def test_pages_are_selected_named_and_rendered_at_the_models_size(pdf):
    whole = load_images([str(pdf)])
    assert [p.source for p in whole] == [f"{pdf}#page={n}" for n in range(1, 6)]
    assert all(max(p.image.size) == 1024 and p.image.mode == "RGB" for p in whole)
    for page, colour in zip(whole, COLOURS):  # each page its own colour (Pillow writes JPEG: near, not equal)
        assert max(abs(a - b) for a, b in zip(page.image.getpixel((700, 1000)), colour)) <= 6
    (third,) = load_images([f"{pdf}#page=3"])
    assert third.source == f"{pdf}#page=3" and third.image.tobytes() == whole[2].image.tobytes()
    picked = load_images([f"{pdf}#pages=2-3,5"])
    assert [p.source.rsplit("#", 1)[1] for p in picked] == ["page=2", "page=3", "page=5"]


def test_a_page_of_200_inches_is_rendered_at_1024_never_at_its_own_size(tmp_path):
    big = _pdf(tmp_path / "poster.pdf", count=1, size=(14400, 9000))  # 200 x 125 inches at 72 dpi
    (page,) = load_source(str(big))
    assert page.image.size == (1024, 640)


def test_a_path_with_a_hash_in_its_name_is_taken_as_it_is(tmp_path):
    odd = _pdf(tmp_path / "notes#page=2", count=3)
    assert len(load_images([str(odd)])) == 3  # the file exists: no selection


def test_video_frames_are_sampled_evenly_with_their_times(clip):
    frames = load_images([str(clip)])
    assert len(frames) == 8  # the default
    times = [float(f.source.rsplit("#t=", 1)[1]) for f in frames]
    assert times == sorted(times) and times[0] < 0.4 and times[-1] > 2.5  # spread over the 3 s
    # The frame shown at t has the brightness it was written with (frame i: 8 * i).
    assert all(abs(f.image.getpixel((5, 5))[0] - 8 * round(t * 10)) <= 6 for f, t in zip(frames, times))
    three = load_images([f"{clip}#frames=3"])
    assert [f.source.rsplit("#t=", 1)[1] for f in three] == ["0.5", "1.5", "2.5"]
    (one,) = load_images([f"{clip}#t=1.5"])
    assert one.source == f"{clip}#t=1.5" and abs(one.image.getpixel((5, 5))[0] - 120) <= 6


def test_animations_keep_their_first_frame_unless_frames_are_asked_for(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (40, 40), (50 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    gif = str(tmp_path / "a.gif")
    (first,) = load_images([gif])
    assert first.source == gif and first.image.getpixel((1, 1)) == (0, 0, 0)
    picked = load_images([gif + "#frames=2"])
    assert [p.source for p in picked] == [gif + "#frame=2", gif + "#frame=4"]
    assert [p.image.getpixel((1, 1))[0] for p in picked] == [50, 150]


@pytest.mark.parametrize("make,source_tail,reason", [
    (lambda p: p.write_bytes(_pdf(p).read_bytes()[:400]) and p, "", "truncated or damaged PDF"),
    (_encrypted_pdf, "", "encrypted PDF"),
    (_empty_pdf, "", "the PDF has no pages"),
    (_pdf, "#page=9", "no page 9: the PDF has 5 pages"),
    (_pdf, "#pages=3-1", "bad selection '#pages=3-1'"),
    (_pdf, "#frames=2", "a PDF takes #page=N"),
    (_pdf, "#pages=1-99999", "at most 2000 pages"),
])
def test_bad_documents_are_one_line_naming_the_file(tmp_path, make, source_tail, reason):
    path = make(tmp_path / "bad.pdf")
    with pytest.raises(ImageLoadError) as err:
        load_images([str(path) + source_tail])
    assert reason in err.value.message and str(path) in err.value.message and "\n" not in err.value.message


def test_bad_videos_and_selections(tmp_path, clip):
    sound = _audio_only(tmp_path / "sound.mp4")  # a video file without a single video frame
    with pytest.raises(ImageLoadError, match="sound.mp4: no video stream"):
        load_images([str(sound)])
    for tail, reason in [("#t=99", "past the end"), ("#page=2", "does not apply to a video"),
                         ("#frames=500", "at most 64 frames")]:
        with pytest.raises(ImageLoadError, match=reason):
            load_images([str(clip) + tail])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:64])
    with pytest.raises(ImageLoadError, match="broken.mp4: not a readable video|broken.mp4: .*no frames"):
        load_images([str(broken)])


def test_one_picture_is_asked_for_and_a_document_is_refused_past_the_cap(pdf):
    with pytest.raises(ImageLoadError, match="holds 5 pictures where one is expected; name one"):
        load_image(str(pdf))
    assert load_image(f"{pdf}#page=2").source == f"{pdf}#page=2"
    with pytest.raises(ImageLoadError, match=r"5 pages do not fit in one question \(at most 3 do\).*#pages=1-3"):
        load_images([str(pdf)], max_pictures=3)


def test_data_uris_carry_pdfs_and_are_named_short(pdf):
    uri = "data:application/pdf;base64," + base64.b64encode(pdf.read_bytes()).decode()
    pages = load_images([uri + "#pages=1-2"])
    assert len(pages) == 2 and all(len(p.source) < 120 and p.source.endswith(f"#page={n}")
                                   for n, p in zip((1, 2), pages))


# -- ask, chat, batch -----------------------------------------------------------------------------


def test_ask_on_a_page_equals_plain_generate_on_that_page(cli, pdf, tiny_folder):
    result = cli(["ask", f"{pdf}#page=2", "What is written?", "-m", "tiny-random", "-n", "10", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["images"] == [f"{pdf}#page=2"]
    model, processor = load_reference(tiny_folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is written?"}]}]
    ids = reference_generate(model, processor, messages, [load_image(f"{pdf}#page=2").image], 10)
    assert got["answer"] == processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip()


def test_ask_refuses_a_document_too_long_for_the_context_before_the_model_loads(cli, tmp_path, monkeypatch):
    import dsvl_cli.render

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(dsvl_cli.render, "load_backend", no_model)
    long = _pdf(tmp_path / "long.pdf", count=30, size=(60, 80))
    result = cli(["ask", str(long), "Summarise.", "-m", "tiny-random"])
    assert result.exit_code == 2
    assert "30 pages do not fit in one question (at most 27 do)" in result.stderr
    assert "#pages=1-27" in result.stderr and "Traceback" not in result.stderr
    for bad in (_encrypted_pdf(tmp_path / "locked.pdf"), _audio_only(tmp_path / "sound.mp4")):
        result = cli(["ask", str(bad), "Summarise.", "-m", "tiny-random"])
        assert result.exit_code == 2 and bad.name in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_chat_image_command_takes_a_page(cli, pdf):
    result = cli(["chat", "-m", "tiny-random", "-n", "3"], input=f"/image {pdf}#pages=2-3\nWhat is this?\n")
    assert result.exit_code == 0, result.output
    assert f"attached {pdf}#page=2, {pdf}#page=3 to your next question (2 images attached)" in result.output


def test_batch_of_a_pdf_is_one_record_per_page_with_its_page(cli, pdf, tmp_path, engine):
    out = tmp_path / "out.jsonl"
    result = cli(["batch", str(pdf), "--prompt", "What is on this page?", "-m", "tiny-random", "-n", "6",
                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["page"])
    assert [r["page"] for r in records] == [1, 2, 3, 4, 5]  # written in completion order (README)
    assert [r["image"] for r in records] == [f"{pdf}#page={n}" for n in range(1, 6)]
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    alone = engine.run(Conversation.single("What is on this page?", [load_image(f"{pdf}#page=4")]),
                       GenerationSettings(max_new_tokens=6))
    assert records[3]["answer"] == alone.answer  # a page in a batch answers as it does on its own


def test_batch_of_a_video_has_times_and_records_may_name_pages(cli, pdf, clip, tmp_path):
    out = tmp_path / "v.jsonl"
    result = cli(["batch", f"{clip}#frames=3", "--prompt", "What happens?", "-m", "tiny-random", "-n", "3",
                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["time"] for line in out.read_text().splitlines()) == [0.5, 1.5, 2.5]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "p2", "image": f"{pdf}#page=2", "prompt": "Read it."}) + "\n"
                    + json.dumps({"id": "whole", "image": str(pdf), "prompt": "Read it."}) + "\n")
    out2 = tmp_path / "j.jsonl"
    result = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "3", "-o", str(out2)])
    by_id = {r["id"]: r for r in map(json.loads, out2.read_text().splitlines())}
    p2, whole = by_id["p2"], by_id["whole"]
    assert p2["page"] == 2 and "answer" in p2
    assert "holds 5 pictures" in whole["error"]["message"]


def test_batch_refuses_a_broken_pdf_input_in_one_line(cli, tmp_path):
    locked = _encrypted_pdf(tmp_path / "locked.pdf")
    result = cli(["batch", str(locked), "--prompt", "Read.", "-m", "tiny-random"])
    assert result.exit_code == 2 and "locked.pdf: encrypted PDF" in result.stderr
    result = cli(["batch", str(_pdf(tmp_path / "fine.pdf")), "-m", "tiny-random"])
    assert result.exit_code == 2 and "needs --prompt" in result.stderr


# -- serve ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc_client(engine):
    from fastapi.testclient import TestClient

    from dsvl_cli.serve.app import create_app
    from dsvl_cli.serve.limits import ServeLimits
    from dsvl_cli.settings import GenerationSettings

    app = create_app(engine, defaults=GenerationSettings(max_new_tokens=6), limits=ServeLimits(max_images=4))
    with TestClient(app) as client:
        yield client


def _ask_server(client, parts):
    return client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": [*parts, {"type": "text", "text": "Read it."}]}]})


def test_serve_takes_a_pdf_file_part_and_a_video_url(doc_client, cli, tmp_path):
    pdf = _pdf(tmp_path / "r.pdf", count=2)
    data = "data:application/pdf;base64," + base64.b64encode(pdf.read_bytes()).decode()
    got = _ask_server(doc_client, [{"type": "file", "file": {"filename": "r.pdf", "file_data": data}}])
    assert got.status_code == 200, got.text
    local = cli(["ask", str(pdf), "Read it.", "-m", "tiny-random", "-n", "6", "--json"])
    assert got.json()["choices"][0]["message"]["content"] == json.loads(local.stdout)["answer"]
    clip = _video(tmp_path / "c.mp4")
    video = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    got = _ask_server(doc_client, [{"type": "video_url", "video_url": {"url": video + "#frames=2"}}])
    assert got.status_code == 200, got.text


def test_serve_counts_pages_against_max_images_and_refuses_bad_parts(doc_client, tmp_path):
    pdf = _pdf(tmp_path / "r.pdf", count=5)
    data = "data:application/pdf;base64," + base64.b64encode(pdf.read_bytes()).decode()
    too_many = _ask_server(doc_client, [{"type": "file", "file": {"file_data": data}}])
    assert too_many.status_code == 400 and "5 pages do not fit" in too_many.json()["error"]["message"]
    by_id = _ask_server(doc_client, [{"type": "file", "file": {"file_id": "file-abc"}}])
    assert by_id.status_code == 400 and "file_id is not supported" in by_id.text
    locked = _encrypted_pdf(tmp_path / "l.pdf")
    data = "data:application/pdf;base64," + base64.b64encode(locked.read_bytes()).decode()
    refused = _ask_server(doc_client, [{"type": "file", "file": {"file_data": data}}])
    assert refused.status_code == 400 and "encrypted PDF" in refused.json()["error"]["message"]
