import io


def test_versioned_bucket_keeps_old_versions(s3_server):
    bucket = s3_server.new_bucket(versioned=True)
    c = s3_server.target().client()
    v1 = c.put_object(bucket, "k", io.BytesIO(b"one"), 3).version_id
    c.put_object(bucket, "k", io.BytesIO(b"two"), 3)
    assert c.get_object(bucket, "k").read() == b"two"
    assert c.get_object(bucket, "k", version_id=v1).read() == b"one"
