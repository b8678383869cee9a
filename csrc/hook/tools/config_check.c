/*
 * config_check.c: `flexai_config_check FILE...` parses each file with the
 * hook's own parser (src/config.c) and exits 1 if any is one the hook would
 * refuse, its problems on stderr (file, line, reason). The tests run it on
 * every example config of the docs; an operator can run it on a node.
 */
#include <stdio.h>

#include "internal.h"

static int check(const char *path)
{
    static struct flexai_config c;
    if (flexai_config_load(path, &c) != 0)
        return 1;
    printf("%s: ok, %d vGPU(s)%s\n", path, c.ndev, c.region_path[0] ? "" : ", private region");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: flexai_config_check FILE...\n");
        return 2;
    }
    int bad = 0;
    for (int i = 1; i < argc; i++)
        bad |= check(argv[i]);
    return bad;
}
