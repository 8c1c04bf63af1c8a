// Linked right after the bridge, ahead of Verilator's runtime and the model: the section alignment below
// starts what follows on a page boundary, so the model's hot code sits at the same place within cache lines
// and pages whatever the size of the bridge before it (sim/rtl/build.py says why that matters).
asm(".text\n.p2align 12\n");
