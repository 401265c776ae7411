#include "kiln_shim.h"
#include <openssl/evp.h>
#include <openssl/opensslv.h>

const uint64_t kiln_guestfs_add_drive_opts_readonly_bitmask = GUESTFS_ADD_DRIVE_OPTS_READONLY_BITMASK;
const uint64_t kiln_guestfs_add_drive_opts_format_bitmask = GUESTFS_ADD_DRIVE_OPTS_FORMAT_BITMASK;
const uint64_t kiln_guestfs_add_drive_opts_discard_bitmask = GUESTFS_ADD_DRIVE_OPTS_DISCARD_BITMASK;
const uint64_t kiln_guestfs_create_flags_no_environment = GUESTFS_CREATE_NO_ENVIRONMENT;
const uint64_t kiln_guestfs_create_flags_no_close_on_exit = GUESTFS_CREATE_NO_CLOSE_ON_EXIT;

guestfs_h *kiln_guestfs_create_flags(unsigned flags) { return guestfs_create_flags(flags); }

const char *kiln_openssl_version_text(void) { return OPENSSL_VERSION_TEXT; }
int kiln_evp_max_md_size(void) { return EVP_MAX_MD_SIZE; }
