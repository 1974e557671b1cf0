from kernelpit.kernels import tool


@tool(name="add")
def other_add(a: int, b: int) -> int:
    return a - b
