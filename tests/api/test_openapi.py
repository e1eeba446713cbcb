"""The published schema tells clients how to send what the routes read."""

from api.app import create_app
from registry.settings import Settings


def test_request_bodies_declare_their_content_types(tmp_path):
    schema = create_app(Settings(data_dir=tmp_path)).openapi()
    jobs = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert list(jobs) == ["multipart/form-data"]  # files: a urlencoded body cannot carry them
    form = jobs["multipart/form-data"]["schema"]["properties"]
    assert form["lambda"]["default"] == 8.0 and form["val_fraction"]["maximum"] == 0.5
    assert form["dataset"]["anyOf"][0]["contentMediaType"] == "application/octet-stream"
    classify = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(classify) == {"application/json", "multipart/form-data"}
    assert classify["application/json"]["schema"]["required"] == ["images"]
    assert classify["multipart/form-data"]["schema"]["properties"]["top_k"]["maximum"] == 1000
