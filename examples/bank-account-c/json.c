/* JSON read and written as serde_json does it: see json.h. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

void buffer_push(buffer_t *buffer, const void *bytes, size_t len) {
    if (buffer->len + len > buffer->cap) {
        size_t cap = buffer->cap ? buffer->cap : 64;
        while (cap < buffer->len + len) cap *= 2;
        buffer->ptr = realloc(buffer->ptr, cap);
        if (!buffer->ptr) abort();
        buffer->cap = cap;
    }
    if (len) memcpy(buffer->ptr + buffer->len, bytes, len);
    buffer->len += len;
}

void buffer_push_str(buffer_t *buffer, const char *text) {
    buffer_push(buffer, text, strlen(text));
}

void buffer_push_u64(buffer_t *buffer, uint64_t value) {
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof digits - ++n] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    buffer_push(buffer, digits + sizeof digits - n, n);
}

void buffer_push_i64(buffer_t *buffer, int64_t value) {
    if (value < 0) buffer_push_str(buffer, "-");
    /* The magnitude as unsigned, so that INT64_MIN has one. */
    buffer_push_u64(buffer, value < 0 ? 0 - (uint64_t)value : (uint64_t)value);
}

void buffer_free(buffer_t *buffer) {
    free(buffer->ptr);
    *buffer = (buffer_t){0};
}

static void fail(buffer_t *error, const char *what, json_t value, const char *expected) {
    buffer_push_str(error, what);
    buffer_push(error, value.ptr, value.len);
    buffer_push_str(error, expected);
}

static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_space(json_t text, size_t i) {
    while (i < text.len && is_space(text.ptr[i])) i++;
    return i;
}

/* The index just past the JSON value that starts at `i`. */
static size_t skip_value(json_t text, size_t i) {
    char c = text.ptr[i];
    if (c == '"') {
        for (i++; text.ptr[i] != '"'; i += text.ptr[i] == '\\' ? 2 : 1) {}
        return i + 1;
    }
    if (c == '{' || c == '[') {
        size_t depth = 0;
        do {
            c = text.ptr[i];
            if (c == '"') {
                i = skip_value(text, i);
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') depth--;
            i++;
        } while (depth > 0);
        return i;
    }
    while (i < text.len && !is_space(text.ptr[i]) && text.ptr[i] != ',' && text.ptr[i] != ':' &&
           text.ptr[i] != ']' && text.ptr[i] != '}') {
        i++;
    }
    return i;
}

bool json_struct(json_t text, const char *const names[], size_t count, json_t fields[],
                 buffer_t *error) {
    size_t i = skip_space(text, 0);
    char open = text.ptr[i];
    if (open != '{' && open != '[') {
        fail(error, "invalid type: ", text, ", expected a struct");
        return false;
    }
    bool found[count];
    memset(found, 0, sizeof found);
    size_t items = 0;
    buffer_t key = {0};
    bool ok = true;
    for (i = skip_space(text, i + 1); ok && text.ptr[i] != '}' && text.ptr[i] != ']';) {
        size_t index = items++;
        if (open == '{') {
            size_t key_end = skip_value(text, i);
            buffer_t ignored = {0};
            key.len = 0;
            json_string((json_t){text.ptr + i, key_end - i}, &key, &ignored);
            buffer_free(&ignored);
            for (index = 0; index < count; index++) {
                if (strlen(names[index]) == key.len && !memcmp(names[index], key.ptr, key.len)) break;
            }
            i = skip_space(text, skip_space(text, key_end) + 1); /* past the `:` */
        }
        size_t end = skip_value(text, i);
        if (index < count) {
            if (found[index]) {
                buffer_push_str(error, "duplicate field `");
                buffer_push_str(error, names[index]);
                buffer_push_str(error, "`");
                ok = false;
            }
            found[index] = true;
            fields[index] = (json_t){text.ptr + i, end - i};
        }
        i = skip_space(text, end);
        if (text.ptr[i] == ',') i = skip_space(text, i + 1);
    }
    buffer_free(&key);
    if (!ok) return false;
    if (open == '[' && items != count) {
        buffer_push_str(error, "invalid length ");
        buffer_push_u64(error, items);
        buffer_push_str(error, ", expected an array of ");
        buffer_push_u64(error, count);
        return false;
    }
    for (size_t index = 0; index < count; index++) {
        if (!found[index]) {
            buffer_push_str(error, "missing field `");
            buffer_push_str(error, names[index]);
            buffer_push_str(error, "`");
            return false;
        }
    }
    return true;
}

bool json_is_null(json_t value) {
    return value.len == 4 && !memcmp(value.ptr, "null", 4);
}

static uint32_t hex4(const char *digits) {
    uint32_t value = 0;
    for (int k = 0; k < 4; k++) {
        char c = digits[k];
        value = value * 16 + (uint32_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return value;
}

static void push_utf8(buffer_t *out, uint32_t code) {
    char bytes[4];
    size_t n;
    if (code < 0x80) {
        bytes[0] = (char)code, n = 1;
    } else if (code < 0x800) {
        bytes[0] = (char)(0xc0 | code >> 6), bytes[1] = (char)(0x80 | (code & 0x3f)), n = 2;
    } else if (code < 0x10000) {
        bytes[0] = (char)(0xe0 | code >> 12), bytes[1] = (char)(0x80 | (code >> 6 & 0x3f));
        bytes[2] = (char)(0x80 | (code & 0x3f)), n = 3;
    } else {
        bytes[0] = (char)(0xf0 | code >> 18), bytes[1] = (char)(0x80 | (code >> 12 & 0x3f));
        bytes[2] = (char)(0x80 | (code >> 6 & 0x3f)), bytes[3] = (char)(0x80 | (code & 0x3f));
        n = 4;
    }
    buffer_push(out, bytes, n);
}

bool json_string(json_t value, buffer_t *out, buffer_t *error) {
    if (value.len < 2 || value.ptr[0] != '"') {
        fail(error, "invalid type: ", value, ", expected a string");
        return false;
    }
    const char *p = value.ptr + 1, *end = value.ptr + value.len - 1;
    while (p < end) {
        const char *run = p;
        while (p < end && *p != '\\') p++;
        buffer_push(out, run, (size_t)(p - run));
        if (p == end) break;
        char escape = p[1];
        p += 2;
        char plain = escape == 'b'   ? '\b'
                     : escape == 'f' ? '\f'
                     : escape == 'n' ? '\n'
                     : escape == 'r' ? '\r'
                     : escape == 't' ? '\t'
                                     : escape; /* `"`, `\` and `/` stand for themselves */
        if (escape != 'u') {
            buffer_push(out, &plain, 1);
            continue;
        }
        uint32_t code = hex4(p);
        p += 4;
        if (code >= 0xd800 && code < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
            uint32_t low = hex4(p + 2);
            if (low >= 0xdc00 && low < 0xe000) {
                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                p += 6;
            }
        }
        if (code >= 0xd800 && code < 0xe000) {
            fail(error, "lone surrogate in ", value, "");
            return false;
        }
        push_utf8(out, code);
    }
    return true;
}

/* The magnitude of a JSON integer (`-?[0-9]+`), or false for anything else, for `-0`
 * (a float to serde_json) and for a magnitude beyond 64 bits. */
static bool integer(json_t value, bool *negative, uint64_t *magnitude) {
    size_t i = 0;
    *negative = value.len > 0 && value.ptr[0] == '-';
    if (*negative) i++;
    if (i == value.len) return false;
    *magnitude = 0;
    for (; i < value.len; i++) {
        char c = value.ptr[i];
        if (c < '0' || c > '9') return false;
        uint64_t digit = (uint64_t)(c - '0');
        if (*magnitude > (UINT64_MAX - digit) / 10) return false;
        *magnitude = *magnitude * 10 + digit;
    }
    return !(*negative && *magnitude == 0);
}

bool json_i64(json_t value, int64_t *out, buffer_t *error) {
    bool negative;
    uint64_t magnitude;
    if (!integer(value, &negative, &magnitude) ||
        magnitude > (negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX)) {
        fail(error, "invalid value: ", value, ", expected i64");
        return false;
    }
    *out = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return true;
}

bool json_u64(json_t value, uint64_t *out, buffer_t *error) {
    bool negative;
    if (!integer(value, &negative, out) || negative) {
        fail(error, "invalid value: ", value, ", expected u64");
        return false;
    }
    return true;
}

void json_write_string(buffer_t *out, const char *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    buffer_push_str(out, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        const char *short_escape = c == '"'    ? "\\\""
                                   : c == '\\' ? "\\\\"
                                   : c == '\b' ? "\\b"
                                   : c == '\f' ? "\\f"
                                   : c == '\n' ? "\\n"
                                   : c == '\r' ? "\\r"
                                   : c == '\t' ? "\\t"
                                               : NULL;
        if (short_escape) {
            buffer_push_str(out, short_escape);
        } else if (c < 0x20) {
            char escape[] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
            buffer_push(out, escape, sizeof escape);
        } else {
            buffer_push(out, &text[i], 1);
        }
    }
    buffer_push_str(out, "\"");
}
