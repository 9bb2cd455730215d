"""The upstream double's other OpenAI endpoints, shaped as OpenAI's spec documents them
(/work/shared/reference/openai-openapi/openapi.yaml): embeddings, image generation, audio
transcription (multipart), file upload (multipart), file listing and download.

Every answer says what the double received, so tests can prove the gateway relayed the bytes
unchanged: the sha256 of the whole request body (header `x-double-body-sha256`, and
`x_double.body_sha256` in multipart answers) and the parsed multipart parts (`x_double.parts`:
name -> sha256 and length, with the file's filename and content type), parsed with the
boundary of the content-type header the double received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import threading
import time
from typing import Any

import orjson
from starlette.types import Message, Receive, Send


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_multipart(content_type: str, body: bytes) -> dict[str, dict[str, Any]]:
    """name -> {sha256, length, filename, content_type, value (short text fields)}."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("no multipart boundary")
    delimiter = b"--" + boundary.encode()
    parts: dict[str, dict[str, Any]] = {}
    sections = body.split(delimiter)
    if sections[-1].strip() != b"--":
        raise ValueError("multipart body does not end with the closing boundary")
    for section in sections[1:-1]:
        head, _, data = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        info: dict[str, Any] = {"sha256": sha256(data), "length": len(data)}
        name = ""
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "content-disposition":
                for item in value.split(";")[1:]:
                    k, _, v = item.strip().partition("=")
                    if k in ("name", "filename"):
                        info[k] = v.strip('"')
                name = info.pop("name", "")
            elif key.lower() == "content-type":
                info["content_type"] = value.strip()
        if "filename" not in info and len(data) < 200:
            info["value"] = data.decode("utf-8", "replace")
        parts[name] = info
    return parts


GATED_FILE = "file-gated"
STREAMED_UPLOAD = "/v1/uploads/upload_streamed/parts"


class EndpointsDouble:
    """State for the endpoints that keep some (uploaded files).

    `GET /v1/files/file-gated/content` sends `b"first part;"`, then waits until a test sets
    `gate` (at most 10 s), then sends `b"second part"`: a client that reads the first part
    before setting the gate proves the answer was relayed as it arrived, not buffered. If its
    client (the gateway) goes away while it waits, it sets `gone` instead."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.gate = threading.Event()
        self.gone = threading.Event()
        # STREAMED_UPLOAD: set once 256 KiB of the request body have arrived (before its end).
        self.first_piece = threading.Event()

    async def streamed_upload(self, receive: Receive, send: Send) -> None:
        """`POST STREAMED_UPLOAD`, read as it arrives (the rest of the double reads whole
        bodies first): answers the body's length and sha256 (an upload part's bytes)."""
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if size >= 256 * 1024:
                self.first_piece.set()
            if not message.get("more_body"):
                break
        answer = {
            "object": "upload.part",
            "bytes": size,
            "x_double": {"sha256": digest.hexdigest()},
        }
        await _json(send, 200, answer, digest.hexdigest())

    async def serve(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Answer the request if it is one of these endpoints; False when it is not."""
        digest = sha256(body)
        if method == "POST" and path == "/v1/embeddings":
            await _json(send, 200, _embeddings(orjson.loads(body)), digest)
        elif method == "POST" and path == "/v1/images/generations":
            await _json(send, 200, _images(orjson.loads(body)), digest)
        elif method == "POST" and path == "/v1/audio/transcriptions":
            parts = parse_multipart(headers.get("content-type", ""), body)
            file = parts["file"]
            text = f"double heard {file['length']} bytes"
            double = {"parts": parts, "body_sha256": digest}
            await _json(send, 200, {"text": text, "x_double": double}, digest)
        elif method == "POST" and path == "/v1/files":
            parts = parse_multipart(headers.get("content-type", ""), body)
            file_id = f"file-double{len(self.files) + 1}"
            content = _file_bytes(headers.get("content-type", ""), body)
            obj = {
                "id": file_id,
                "object": "file",
                "bytes": parts["file"]["length"],
                "created_at": int(time.time()),
                "filename": parts["file"].get("filename", ""),
                "purpose": parts["purpose"]["value"],
                "status": "processed",
                "expires_at": None,
                "status_details": None,
            }
            self.files[file_id] = (obj, content)
            double = {"parts": parts, "body_sha256": digest}
            await _json(send, 200, {**obj, "x_double": double}, digest)
        elif method == "GET" and path == "/v1/files":
            data = [obj for obj, _ in self.files.values()]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            listing = {
                "object": "list",
                "data": data,
                "first_id": first,
                "last_id": last,
                "has_more": False,
            }
            await _json(send, 200, listing, digest)
        elif method == "GET" and path == f"/v1/files/{GATED_FILE}/content":
            await self._gated(receive, send)
        elif method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            file_id = path.removeprefix("/v1/files/").removesuffix("/content")
            if file_id not in self.files:
                await _not_found(send, file_id)
                return True
            await _download(send, self.files[file_id][1])
        elif method == "DELETE" and path.startswith("/v1/files/"):
            file_id = path.removeprefix("/v1/files/")
            if self.files.pop(file_id, None) is None:
                await _not_found(send, file_id)
                return True
            await _json(send, 200, {"id": file_id, "object": "file", "deleted": True}, digest)
        else:
            return False
        return True

    async def _gated(self, receive: Receive, send: Send) -> None:
        start: Message = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],  # no length: chunked
        }
        await send(start)
        await send({"type": "http.response.body", "body": b"first part;", "more_body": True})
        gate = asyncio.ensure_future(asyncio.to_thread(self.gate.wait, 10))
        gone = asyncio.ensure_future(_disconnected(receive))
        await asyncio.wait({gate, gone}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            self.gone.set()
            return
        gone.cancel()
        await send({"type": "http.response.body", "body": b"second part", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _file_bytes(content_type: str, body: bytes) -> bytes:
    """The raw bytes of the `file` part (kept for the download endpoint)."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for section in body.split(b"--" + boundary)[1:-1]:
        head, _, data = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data.removesuffix(b"\r\n")
    return b""


_VECTOR = (0.25, -0.5, 0.125)


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    value = body["input"]
    several = isinstance(value, list) and value and not isinstance(value[0], int)
    inputs = value if several else [value]
    as_base64 = body.get("encoding_format") == "base64"
    vector: Any = list(_VECTOR)
    if as_base64:
        vector = base64.b64encode(struct.pack("<3f", *_VECTOR)).decode()
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(inputs))]
    tokens = sum(len(str(v).split()) for v in inputs)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# A 1x1 transparent PNG.
_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def _images(body: dict[str, Any]) -> dict[str, Any]:
    count = int(body.get("n") or 1)
    return {
        "created": int(time.time()),
        "data": [{"b64_json": _PNG, "revised_prompt": body["prompt"]} for _ in range(count)],
    }


async def _json(send: Send, status: int, payload: Any, body_digest: str) -> None:
    data = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"x-double-served", b"1"),
                (b"x-double-body-sha256", body_digest.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _not_found(send: Send, file_id: str) -> None:
    error = {
        "message": f"No such File object: {file_id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    await _json(send, 404, {"error": error}, "")


async def _download(send: Send, content: bytes) -> None:
    """The file's bytes in several body messages, with their length (as OpenAI sends it)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(content)).encode()),
                (b"x-double-served", b"1"),
            ],
        }
    )
    step = max(1, len(content) // 4)
    for i in range(0, len(content), step):
        chunk = content[i : i + step]
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
