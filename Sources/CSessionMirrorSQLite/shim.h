#ifndef CSESSIONMIRROR_SQLITE_SHIM_H
#define CSESSIONMIRROR_SQLITE_SHIM_H
#include <sqlite3.h>
#endif
