/* tests/unit/test_topo.c - the PCI distance behind `dstrain topo`'s GPU -> NIC pairing
 * (runtime/topo.h): bridges counted below the last common sysfs component, -1 across root
 * complexes or outside /sys/devices. Paths are written out like the sysfs tree of a node with
 * a PCIe switch (0000:01 -> 0000:02:xx) holding one GPU and one NIC, and a second root complex.
 * Not here: the report itself (tests/cli/test_topo.sh).
 */
#include <stdio.h>

#include "runtime/topo.h"
#include "tests/unit/testing.h"

#define ROOT0 "/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
#define ROOT1 "/sys/devices/pci0000:80/0000:80:01.0"

int main(void)
{
    static const struct { const char *a, *b; int want; } CASES[] = {
        /* GPU and NIC under the same switch: up 2 from each to the switch's upstream port */
        { ROOT0 "/0000:02:00.0/0000:03:00.0", ROOT0 "/0000:02:01.0/0000:04:00.0", 4 },
        /* NIC directly on the same switch's other downstream port */
        { ROOT0 "/0000:02:00.0/0000:03:00.0", ROOT0 "/0000:02:00.0/0000:03:00.1", 2 },
        /* the same device */
        { ROOT0 "/0000:02:00.0", ROOT0 "/0000:02:00.0", 0 },
        /* same root complex, different root ports */
        { "/sys/devices/pci0000:00/0000:00:01.0/0000:05:00.0", "/sys/devices/pci0000:00/0000:00:02.0/0000:06:00.0", 4 },
        /* another root complex (another socket): not comparable */
        { ROOT0 "/0000:02:00.0", ROOT1 "/0000:81:00.0", -1 },
        /* not a sysfs device path */
        { "/tmp/x", ROOT0, -1 },
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        int got = topo_pci_distance(CASES[i].a, CASES[i].b), back = topo_pci_distance(CASES[i].b, CASES[i].a);
        EXPECT(got == CASES[i].want, "case %zu: distance %d, want %d", i, got, CASES[i].want);
        EXPECT(back == got, "case %zu: not symmetric (%d vs %d)", i, got, back);
    }
    return test_finish();
}
