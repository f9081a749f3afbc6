

def test_the_pfn_of_a_raw_pte_follows_the_physical_address_width(tmp_path):
    from vfiomond.pagemap import pte_pfn_decoder

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\naddress sizes\t: 46 bits physical, 48 bits virtual\npower management:\n")
    pfn = pte_pfn_decoder(str(cpuinfo))
    # NX, a protection key, software bits and the low flag bits are not the PFN.
    assert pfn((1 << 63) | (0xA << 59) | (1 << 52) | (0x123456 << 12) | 0x867) == 0x123456
    assert pfn((1 << 46) | (0x1000 << 12)) == 0x1000  # above the 46-bit width: not address bits
    cpuinfo.write_text("processor\t: 0\n")
    assert pte_pfn_decoder(str(cpuinfo)) is None
    assert pte_pfn_decoder(str(tmp_path / "missing")) is None


def test_thp_page_count_comes_from_sysfs(tmp_path):
    import mmap

    from vfiomond.pagemap import hpage_pmd_pages

    size = tmp_path / "hpage_pmd_size"
    size.write_text("2097152\n")
    assert hpage_pmd_pages(str(size)) == 2097152 // mmap.PAGESIZE
    size.write_text("not a size\n")
    assert hpage_pmd_pages(str(size)) is None
    size.write_text("0\n")
    assert hpage_pmd_pages(str(size)) is None
    assert hpage_pmd_pages(str(tmp_path / "missing")) is None  # no THP in this kernel
