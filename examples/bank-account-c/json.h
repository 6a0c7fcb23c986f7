/*
 * JSON read and written the way the Rust examples' serde_json does, so that a C module folds
 * the same events into the same state, byte for byte, and faults on the same payloads: a
 * struct is an object (fields in any order, others ignored, none missing, none twice) or an
 * array of exactly its fields; an i64 is an integer without fraction or exponent (and `-0`
 * is a float); a string may hold no lone surrogate; strings are written with serde_json's
 * escapes.
 *
 * Every reader takes JSON text the host has already checked (it refuses an append whose data
 * is not valid JSON). On failure a reader returns false and appends the reason to `error`.
 */
#ifndef REFOLD_JSON_H
#define REFOLD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer on the heap; zero-initialised it is empty. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} buffer_t;

void buffer_push(buffer_t *buffer, const void *bytes, size_t len);
void buffer_push_str(buffer_t *buffer, const char *text);
void buffer_push_i64(buffer_t *buffer, int64_t value);
void buffer_push_u64(buffer_t *buffer, uint64_t value);
void buffer_free(buffer_t *buffer);

/* A stretch of JSON text, not NUL-terminated. */
typedef struct {
    const char *ptr;
    size_t len;
} json_t;

/* The JSON text of the fields `names[0..count)` of the struct `text`, into `fields`. */
bool json_struct(json_t text, const char *const names[], size_t count, json_t fields[],
                 buffer_t *error);

bool json_is_null(json_t value);

/* The string `value` holds, decoded to UTF-8 and appended to `out`. */
bool json_string(json_t value, buffer_t *out, buffer_t *error);

bool json_i64(json_t value, int64_t *out, buffer_t *error);
bool json_u64(json_t value, uint64_t *out, buffer_t *error);

/* `text` (UTF-8) as a JSON string, escaped as serde_json escapes it, appended to `out`. */
void json_write_string(buffer_t *out, const char *text, size_t len);

#endif
