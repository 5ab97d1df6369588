"""File formats the harness reads and writes: a module's ELF file (elf), JUnit XML (junit),
the run's markdown summary and GitHub annotations (summary_md).

Pure: bytes or text in, typed values or text out. Nothing here starts a process or imports pytest.
"""
