#include "kiln_shim.h"
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <sys/vfs.h>

const uint64_t kiln_guestfs_add_drive_opts_readonly_bitmask = GUESTFS_ADD_DRIVE_OPTS_READONLY_BITMASK;
const uint64_t kiln_guestfs_add_drive_opts_format_bitmask = GUESTFS_ADD_DRIVE_OPTS_FORMAT_BITMASK;
const uint64_t kiln_guestfs_add_drive_opts_discard_bitmask = GUESTFS_ADD_DRIVE_OPTS_DISCARD_BITMASK;
const uint64_t kiln_guestfs_create_flags_no_environment = GUESTFS_CREATE_NO_ENVIRONMENT;
const uint64_t kiln_guestfs_create_flags_no_close_on_exit = GUESTFS_CREATE_NO_CLOSE_ON_EXIT;

guestfs_h *kiln_guestfs_create_flags(unsigned flags) { return guestfs_create_flags(flags); }

long kiln_fstatfs_type(int fd) {
    struct statfs info;
    return fstatfs(fd, &info) == 0 ? (long)info.f_type : -1;
}

const char *kiln_openssl_version_text(void) { return OPENSSL_VERSION_TEXT; }
int kiln_evp_max_md_size(void) { return EVP_MAX_MD_SIZE; }

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <openssl/md4.h>
#include <openssl/rc4.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <arpa/inet.h>

void kiln_md4(const uint8_t *data, size_t length, uint8_t digest[16]) { MD4(data, length, digest); }

struct kiln_rc4 { RC4_KEY key; };

kiln_rc4 *kiln_rc4_new(const uint8_t *key, int length) {
    kiln_rc4 *state = malloc(sizeof(kiln_rc4));
    if (state) RC4_set_key(&state->key, length, key);
    return state;
}

void kiln_rc4_apply(kiln_rc4 *state, const uint8_t *input, uint8_t *output, size_t length) {
    RC4(&state->key, length, input, output);
}

void kiln_rc4_free(kiln_rc4 *state) { free(state); }

struct kiln_tls { SSL_CTX *context; SSL *ssl; };

static void kiln_tls_error(char *error, size_t size, const char *what) {
    unsigned long code = ERR_get_error();
    char reason[256] = "";
    if (code) ERR_error_string_n(code, reason, sizeof reason);
    snprintf(error, size, "%s%s%s", what, code ? ": " : "", reason);
    ERR_clear_error();
}

kiln_tls *kiln_tls_connect(int fd, const char *host, int verify, char *error, size_t error_size) {
    kiln_tls *tls = calloc(1, sizeof(kiln_tls));
    if (!tls) { snprintf(error, error_size, "out of memory"); return NULL; }
    tls->context = SSL_CTX_new(TLS_client_method());
    if (!tls->context) { kiln_tls_error(error, error_size, "SSL_CTX_new"); free(tls); return NULL; }
    SSL_CTX_set_min_proto_version(tls->context, TLS1_2_VERSION);
    if (verify) {
        SSL_CTX_set_verify(tls->context, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_default_verify_paths(tls->context);
    } else {
        SSL_CTX_set_verify(tls->context, SSL_VERIFY_NONE, NULL);
    }
    tls->ssl = SSL_new(tls->context);
    if (!tls->ssl) { kiln_tls_error(error, error_size, "SSL_new"); kiln_tls_free(tls); return NULL; }
    unsigned char address[16];
    int literal = inet_pton(AF_INET, host, address) == 1 || inet_pton(AF_INET6, host, address) == 1;
    if (!literal) SSL_set_tlsext_host_name(tls->ssl, host);
    if (verify) {
        X509_VERIFY_PARAM *param = SSL_get0_param(tls->ssl);
        if (literal) X509_VERIFY_PARAM_set1_ip_asc(param, host); else SSL_set1_host(tls->ssl, host);
    }
    SSL_set_fd(tls->ssl, fd);
    if (SSL_connect(tls->ssl) != 1) {
        long result = SSL_get_verify_result(tls->ssl);
        if (verify && result != X509_V_OK) {
            snprintf(error, error_size, "TLS handshake: certificate not trusted (%s); use --insecure for a self-signed certificate",
                     X509_verify_cert_error_string(result));
            ERR_clear_error();
        } else {
            kiln_tls_error(error, error_size, "TLS handshake failed");
        }
        kiln_tls_free(tls);
        return NULL;
    }
    return tls;
}

long kiln_tls_read(kiln_tls *tls, uint8_t *buffer, size_t size) {
    int n = SSL_read(tls->ssl, buffer, (int)(size > 1 << 30 ? 1 << 30 : size));
    if (n > 0) return n;
    int code = SSL_get_error(tls->ssl, n);
    ERR_clear_error();
    return code == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

long kiln_tls_write(kiln_tls *tls, const uint8_t *buffer, size_t size) {
    int n = SSL_write(tls->ssl, buffer, (int)(size > 1 << 30 ? 1 << 30 : size));
    if (n > 0) return n;
    ERR_clear_error();
    return -1;
}

int kiln_tls_peer_sha256(kiln_tls *tls, uint8_t digest[32]) {
    X509 *certificate = SSL_get1_peer_certificate(tls->ssl);
    if (!certificate) return 0;
    unsigned int length = 0;
    int ok = X509_digest(certificate, EVP_sha256(), digest, &length) == 1 && length == 32;
    X509_free(certificate);
    return ok;
}

void kiln_tls_free(kiln_tls *tls) {
    if (!tls) return;
    if (tls->ssl) { SSL_shutdown(tls->ssl); SSL_free(tls->ssl); }
    if (tls->context) SSL_CTX_free(tls->context);
    free(tls);
}
