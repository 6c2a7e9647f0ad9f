import Glibc

/// SHA-256 from libnettle, when libnettle 3 (soname 8) is already in the
/// process: Debian's libarchive links it, so it costs no new dependency. Its
/// x86-64 code uses the SHA extensions: 1.2 GB/s on the project's machine,
/// against 130-150 MB/s for the pure-Swift `SHA256`, which stays the fallback
/// (and the reference the tests compare this with). Used where SHA-256 is
/// nearly all the work: the dm-verity hash tree, and the digest of every file
/// `SHA256.hexDigest(ofFile:)` reads (outputs, tree cache entries).
///
/// Only looked up, never loaded: `RTLD_NOLOAD` finds the library if the
/// process already has it and nothing else. The soname pins the ABI (nettle 3:
/// `sha256_digest(ctx, length, digest)`; nettle 4 changes it under another soname).
public struct NettleSHA256: @unchecked Sendable {
    typealias Initialize = @convention(c) (UnsafeMutableRawPointer) -> Void
    typealias Update = @convention(c) (UnsafeMutableRawPointer, Int, UnsafeRawPointer) -> Void
    typealias Digest = @convention(c) (UnsafeMutableRawPointer, Int, UnsafeMutableRawPointer) -> Void

    let initialize: Initialize
    let update: Update
    let digest: Digest
    /// struct sha256_ctx is 112 bytes in nettle 3; room to spare.
    public static let contextSize = 256

    /// nil when libnettle.so.8 is not in the process (then use `SHA256`).
    public static let shared: NettleSHA256? = {
        guard let handle = dlopen("libnettle.so.8", RTLD_NOW | RTLD_NOLOAD),
              let i = dlsym(handle, "nettle_sha256_init"),
              let u = dlsym(handle, "nettle_sha256_update"),
              let d = dlsym(handle, "nettle_sha256_digest") else { return nil }
        return NettleSHA256(initialize: unsafeBitCast(i, to: Initialize.self), update: unsafeBitCast(u, to: Update.self),
                            digest: unsafeBitCast(d, to: Digest.self))
    }()

    /// A streaming hash: `start`, any number of `update`s, then `finish` (32 bytes),
    /// with `context` as scratch (`contextSize` bytes).
    public func start(context: UnsafeMutableRawPointer) { initialize(context) }
    public func update(context: UnsafeMutableRawPointer, _ data: UnsafeRawBufferPointer) {
        if data.count > 0 { update(context, data.count, data.baseAddress!) }
    }
    public func finish(context: UnsafeMutableRawPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBytes { digest(context, 32, $0.baseAddress!) }
        return out
    }

    /// sha256(prefix ‖ data) into `out` (32 bytes), with `context` as scratch (`contextSize` bytes).
    public func hash(prefix: UnsafeRawBufferPointer, _ data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer,
              context: UnsafeMutableRawPointer) {
        initialize(context)
        if prefix.count > 0 { update(context, prefix.count, prefix.baseAddress!) }
        if data.count > 0 { update(context, data.count, data.baseAddress!) }
        digest(context, 32, out)
    }
}
