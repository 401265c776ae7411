#ifndef KILN_SHIM_H
#define KILN_SHIM_H
#include <stdint.h>
#include <guestfs.h>

/* libguestfs optional-argument bitmasks are macros, which Swift does not import. */
extern const uint64_t kiln_guestfs_add_drive_opts_readonly_bitmask;
extern const uint64_t kiln_guestfs_add_drive_opts_format_bitmask;
extern const uint64_t kiln_guestfs_add_drive_opts_discard_bitmask;
extern const uint64_t kiln_guestfs_create_flags_no_environment;
extern const uint64_t kiln_guestfs_create_flags_no_close_on_exit;

/* guestfs_create_flags is variadic; Swift cannot call it. */
guestfs_h *kiln_guestfs_create_flags(unsigned flags);

/* OpenSSL's version text is a string macro. */
const char *kiln_openssl_version_text(void);
/* EVP_MAX_MD_SIZE, as a value. */
int kiln_evp_max_md_size(void);

#endif
