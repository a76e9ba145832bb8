static uint8_t* sqcc_ws_cur;
static uint8_t* sqcc_ws_end;
int sqcc_last_error;
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type; (void)device_id; (void)dtype_code_hint; (void)dtype_bits_hint;
  uintptr_t p = ((uintptr_t)sqcc_ws_cur + @ALIGN_MASK@u) & ~(uintptr_t)@ALIGN_MASK@u;
  if (p + nbytes > (uintptr_t)sqcc_ws_end) { sqcc_last_error = 2; return NULL; }
  sqcc_ws_cur = (uint8_t*)(p + (uintptr_t)nbytes);
  return (void*)p;
}
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  sqcc_ws_cur = (uint8_t*)ptr; /* kernels free in LIFO order */
  return 0;
}
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  (void)kind; (void)parts; (void)n; sqcc_last_error = 1;
}
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* msg) {
  (void)kind; (void)msg; sqcc_last_error = 1;
}

