"""The server's request handling and its security rules: loopback only, documented JSON routes only, names as text."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

import tnderiv
from tnderiv.explore import explore
from tnderiv.explore.page import state_json
from tnderiv.explore.server import MAX_BODY, ExplorerServer, check_host
from tnderiv.ir import Diagram, operand

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def served() -> Iterator[tnderiv.explore.__class__]:
    explorer = explore("conv1d", "vjp_weight", {"x": (2, 2, 6)})
    yield explorer
    explorer.stop()


def request(explorer, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = explorer.server.httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def post_json(explorer, path: str, payload: object, **headers: str):
    body = json.dumps(payload).encode()
    return request(explorer, "POST", path, body, {"Content-Type": "application/json", **headers})


def assert_json_error(response, data: bytes, status: int, fragment: str) -> None:
    assert response.status == status
    assert response.getheader("Content-Type") == "application/json"
    message = json.loads(data)["error"]
    assert fragment in message
    assert "Traceback" not in message and 'File "' not in message


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "10.0.0.1", "::1", "::", "example.com", ""])
def test_non_loopback_binds_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_host(host)
    with pytest.raises(ValueError, match="loopback"):
        explore("conv1d", "vjp_weight", host=host)


def test_loopback_binds_are_accepted() -> None:
    assert check_host("127.0.0.1") == "127.0.0.1"
    assert check_host("localhost") == "127.0.0.1"
    with pytest.raises(ValueError, match="port=70000"):
        ExplorerServer(None, "127.0.0.1", 70000)  # type: ignore[arg-type]


def test_page_is_served_with_a_strict_policy(served) -> None:
    response, data = request(served, "GET", "/")
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    policy = response.getheader("Content-Security-Policy")
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline'" not in policy.split("style-src")[0]
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    page = data.decode()
    assert 'data-mode="server"' in page and f'<script nonce="{nonce}">' in page
    for external in ("<script src", "src=\"http", "href=\"http", "@import", "url(http"):  # every asset is inline
        assert external not in page


@pytest.mark.parametrize("path", ["/favicon.ico", "/api/plan", "/../../etc/passwd", "/static/page.js", "/tnderiv/explore/assets/page.js"])
def test_unknown_get_routes_are_404(served, path: str) -> None:
    response, data = request(served, "GET", path)
    assert_json_error(response, data, 404, "no route")


def test_unknown_post_route_is_404(served) -> None:
    response, data = post_json(served, "/api/run", {"code": "print(1)"})
    assert_json_error(response, data, 404, "no route")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(served, method: str) -> None:
    response, data = request(served, method, "/api/plan", b"{}", {"Content-Type": "application/json"})
    assert_json_error(response, data, 405, "not allowed")


def test_malformed_json_is_400(served) -> None:
    response, data = request(served, "POST", "/api/plan", b"{'spec': ", {"Content-Type": "application/json"})
    assert_json_error(response, data, 400, "malformed JSON")


def test_wrong_content_type_is_415(served) -> None:
    response, data = request(served, "POST", "/api/plan", b"spec=conv2d", {"Content-Type": "application/x-www-form-urlencoded"})
    assert_json_error(response, data, 415, "application/json")


def test_oversized_body_is_413_and_not_read(served) -> None:
    body = json.dumps({"spec": "x" * (MAX_BODY + 10)}).encode()
    response, data = request(served, "POST", "/api/plan", body, {"Content-Type": "application/json"})
    assert_json_error(response, data, 413, "at most")


def test_unknown_keys_are_400(served) -> None:
    response, data = post_json(served, "/api/plan", {"spec": "conv1d", "code": "__import__('os')"})
    assert_json_error(response, data, 400, "unknown keys ['code']")


def test_foreign_host_and_origin_are_refused(served) -> None:
    response, data = post_json(served, "/api/plan", {}, Host="attacker.example:80")
    assert_json_error(response, data, 421, "Host")
    response, data = post_json(served, "/api/plan", {}, Origin="http://attacker.example")
    assert_json_error(response, data, 403, "origin")


def test_plan_route_replans(served) -> None:
    response, data = post_json(served, "/api/plan", {"spec": "conv1d:stride=2", "quantity": "vjp_x", "sizes": {"N": 3, "I0": 9}})
    assert response.status == 200
    report = json.loads(data)
    assert report["settings"]["spec"] == "conv1d:stride=2" and report["shapes"]["output"] == [3, 2, 9] and report["shapes"]["grad_out"] == [3, 2, 4]
    assert "S=2" in report["expression"]


def test_library_error_comes_back_as_its_own_message(served) -> None:
    response, data = post_json(served, "/api/plan", {"spec": "conv1d:in=3,groups=2", "quantity": "vjp_weight"})
    assert_json_error(response, data, 400, "in_channels=3 is not divisible by groups=2")
    response, data = post_json(served, "/api/plan", {"spec": "conv1d", "quantity": "vjp_nothing"})
    assert_json_error(response, data, 400, "nothing")


def test_measure_route_times_a_candidate(served) -> None:
    response, data = post_json(served, "/api/measure", {"spec": "conv1d", "quantity": "vjp_weight", "candidate": "c0"})
    assert response.status == 200
    result = json.loads(data)
    assert result["candidate"] == "c0" and 0 < result["best_s"] <= result["median_s"] and result["repeats"] >= 5
    response, data = post_json(served, "/api/measure", {"spec": "conv1d", "quantity": "vjp_weight", "candidate": "c99"})
    assert_json_error(response, data, 400, "candidate='c99'")


def test_measuring_refuses_what_would_not_fit(served, monkeypatch: pytest.MonkeyPatch) -> None:
    big = {"spec": "conv1d", "quantity": "vjp_weight", "sizes": {"N": 4096, "I0": 4096}}
    response, data = post_json(served, "/api/measure", {**big, "candidate": "c0"})
    elements = 4096 * 2 * 4096 + 4096 * 2 * (4096 - 2)  # x and grad_out of a 3-tap convolution
    assert_json_error(response, data, 400, f"operands of {elements:,} elements")
    from tnderiv.explore import measure as measure_module

    report = json.loads(post_json(served, "/api/plan", {"spec": "conv1d", "quantity": "vjp_weight"})[1])
    row = max(report["candidates"], key=lambda c: c["peak_memory"])
    monkeypatch.setattr(measure_module, "MAX_BYTES", row["peak_memory"] - 1)
    response, data = post_json(served, "/api/measure", {"spec": "conv1d", "quantity": "vjp_weight", "candidate": row["id"]})
    assert_json_error(response, data, 400, f"need {row['peak_memory']:,} bytes at once")


def evil_layer() -> tnderiv.DiagramLayer:
    forward = Diagram((operand("x", "n", EVIL), operand(EVIL, "o", EVIL)), ("n", "o"), {"n": "N", EVIL: 3, "o": 4})
    return tnderiv.DiagramLayer(forward, inputs=("x",), params=(EVIL,))


def test_script_names_are_escaped_in_the_page() -> None:
    explorer = explore(evil_layer(), "vjp_x", serve=False)
    report = explorer.report()
    assert any(node["name"] == EVIL for node in report["diagram"]["nodes"])
    page = explorer.to_html()
    assert EVIL not in page and "<script>alert" not in page
    assert page.count("<script") == 2  # the state (JSON) and the page's own code, nothing else
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in state_json(report)
    assert "&lt;script&gt;" in report["diagram"]["svg"]  # the drawing escapes the name as text


def test_repr_html_embeds_the_static_page_in_an_iframe() -> None:
    explorer = explore(evil_layer(), "vjp_x", serve=False)
    html = explorer._repr_html_()
    assert html.startswith("<iframe sandbox='allow-scripts allow-downloads' srcdoc=\"")
    assert "<script>alert" not in html and "&lt;script" in html and explorer.url is None
