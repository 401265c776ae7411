#ifndef KILN_SHIM_H
#define KILN_SHIM_H
#include <stddef.h>
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

/* fstatfs lives in <sys/vfs.h>, which Glibc's Swift module does not export: the file system type (f_type) of an
   open file, or -1. */
long kiln_fstatfs_type(int fd);

/* OpenSSL's version text is a string macro. */
const char *kiln_openssl_version_text(void);
/* EVP_MAX_MD_SIZE, as a value. */
int kiln_evp_max_md_size(void);

/* NTLM needs MD4 (the NT hash) and RC4 (sealing). OpenSSL 3 keeps both only as deprecated low-level calls, which
   these wrappers confine to one file. */
void kiln_md4(const uint8_t *data, size_t length, uint8_t digest[16]);
typedef struct kiln_rc4 kiln_rc4;
kiln_rc4 *kiln_rc4_new(const uint8_t *key, int length);
void kiln_rc4_apply(kiln_rc4 *state, const uint8_t *input, uint8_t *output, size_t length);
void kiln_rc4_free(kiln_rc4 *state);

/* TLS for the WinRM client: SNI is a macro; the rest wraps OpenSSL's SSL calls with plain types. */
typedef struct kiln_tls kiln_tls;
/* Connects TLS over a connected socket. verify: check the chain and host name. On failure returns NULL and fills
   error (at most error_size bytes). */
kiln_tls *kiln_tls_connect(int fd, const char *host, int verify, char *error, size_t error_size);
/* Like read(2)/write(2): bytes moved, 0 at a clean close, -1 on an error. */
long kiln_tls_read(kiln_tls *tls, uint8_t *buffer, size_t size);
long kiln_tls_write(kiln_tls *tls, const uint8_t *buffer, size_t size);
/* SHA-256 of the peer certificate (DER); returns 0 when there is none. */
int kiln_tls_peer_sha256(kiln_tls *tls, uint8_t digest[32]);
void kiln_tls_free(kiln_tls *tls);

#endif
