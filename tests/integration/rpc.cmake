# rpc/: CRC-32C, the tensor codec and chunking, and the server plumbing (auth, TLS, health,
# metrics, shutdown) on a real loopback server.
lowbit_integration_test(rpc_test ${CMAKE_CURRENT_SOURCE_DIR}/rpc_test.cc LIBS lowbit_rpc)
