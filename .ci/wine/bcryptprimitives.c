/*
 * Minimal stand-in for Windows' bcryptprimitives.dll, for running Rust
 * programs under Wine 8.0 (Debian 12).
 *
 * Rust >= 1.78 std on Windows imports ProcessPrng from bcryptprimitives.dll
 * for its random numbers (HashMap seeds, etc.). Wine 8.0 has no such DLL, so
 * every Rust .exe fails to load (exit code 53) before main, without a message.
 * This DLL exports ProcessPrng on top of SystemFunction036 (RtlGenRandom)
 * from advapi32, which Wine does implement.
 *
 * Built and installed into the Wine prefix by .ci/setup-wine.sh; never used
 * on real Windows.
 */
#include <windows.h>

/* RtlGenRandom: exported by advapi32 under this name. */
BOOLEAN WINAPI SystemFunction036(PVOID RandomBuffer, ULONG RandomBufferLength);

/* BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData): always succeeds on Windows. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    while (cbData > 0) {
        ULONG chunk = cbData > 0x40000000u ? 0x40000000u : (ULONG)cbData;
        if (!SystemFunction036(pbData, chunk))
            return FALSE;
        pbData += chunk;
        cbData -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst; (void)reason; (void)reserved;
    return TRUE;
}
