import dataclasses

from qbench.machine import _cpu_info, current_machine

# Two logical CPUs of a cloud VM whose brand string hides the generation.
ZEN3_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse4_2 avx avx2 fma f16c
processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse4_2 avx avx2 fma f16c
"""


def test_an_x86_cpu_name_carries_its_family_and_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3_CPUINFO)
    name, isa = _cpu_info(str(cpuinfo))
    assert name == "AMD EPYC (family 25 model 1)"
    assert isa == ("sse4_2", "avx", "avx2", "fma", "f16c")

    zen2 = ZEN3_CPUINFO.replace("cpu family\t: 25\nmodel\t\t: 1", "cpu family\t: 23\nmodel\t\t: 49")
    cpuinfo.write_text(zen2)
    other_name, other_isa = _cpu_info(str(cpuinfo))
    assert other_isa == isa and other_name == "AMD EPYC (family 23 model 49)"
    here = current_machine()
    zen3 = dataclasses.replace(here, cpu_model=name, isa=isa)
    assert zen3.fingerprint_hash != dataclasses.replace(zen3, cpu_model=other_name).fingerprint_hash


def test_a_cpuinfo_without_family_keeps_the_plain_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nModel\t\t: Raspberry Pi 4 Model B\nFeatures\t: fp asimd\n")
    assert _cpu_info(str(cpuinfo)) == ("Raspberry Pi 4 Model B", ("asimd",))
