// CRC-32C (Castagnoli), the checksum of chunked tensors and uploads on the wire.
// Hardware instruction (SSE4.2) when the CPU has it, a table otherwise; same result either way.
#ifndef LOWBIT_RPC_CRC32C_H_
#define LOWBIT_RPC_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace lowbit::rpc {

// Extends `crc` (the CRC of the bytes before) with `size` more bytes: Crc32c(b, n) of a whole
// buffer equals Crc32c(b + k, n - k, Crc32c(b, k)). Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_CRC32C_H_
