#ifndef CSESSIONMIRROR_HIREDIS_SHIM_H
#define CSESSIONMIRROR_HIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <uv.h>
#endif
