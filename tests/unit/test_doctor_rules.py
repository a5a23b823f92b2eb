"""Pure rules of `doctor`'s checks."""

from aixsss_ops.doctor.checks import disk_level

GB = 1024 ** 3


def test_disk_level_uses_percentages_only_where_the_free_space_is_also_small():
    assert disk_level(37 * GB, 252 * GB) == "ok"  # 15% of a large volume is still plenty
    assert disk_level(19 * GB, 252 * GB) == "warn"
    assert disk_level(6 * GB, 252 * GB) == "warn"
    assert disk_level(4 * GB, 252 * GB) == "fail"  # under 5% and under 5 GB
    assert disk_level(4 * GB, 100 * GB) == "fail"  # under 5% and under 5 GB
    assert disk_level(int(1.5 * GB), 8 * GB) == "warn"  # under 2 GB on a small disk
    assert disk_level(int(0.4 * GB), 1000 * GB) == "fail"
    assert disk_level(6 * GB, 8 * GB) == "ok"
