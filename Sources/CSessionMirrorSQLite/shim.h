#ifndef CSESSIONMIRROR_SQLITE_SHIM_H
#define CSESSIONMIRROR_SQLITE_SHIM_H
#include <sqlite3.h>

/// sqlite3_db_config is variadic, which Swift cannot call: this wrapper covers the options that
/// take an int and an int* ("the first argument is an integer ... the second is a pointer to an
/// integer into which is written 0 or 1 to indicate the new setting"; NULL is allowed).
static inline int sessionmirror_sqlite3_db_config_flag(sqlite3 *db, int op, int value) {
    return sqlite3_db_config(db, op, value, (int *)0);
}
#endif
