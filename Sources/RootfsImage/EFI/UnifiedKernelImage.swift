import RootfsSupport
import Glibc

/// A unified kernel image (UKI): systemd's EFI stub with the kernel, the
/// initrd, the command line and os-release appended as PE sections, laid out
/// as systemd's ukify does: each new section right after the previous one, its
/// virtual address aligned to the stub's SectionAlignment, its file offset to
/// FileAlignment, read-only initialized data; `.linux` last. NumberOfSections,
/// SizeOfImage, SizeOfInitializedData and the checksum are updated; nothing
/// depends on the time or the host, so the same inputs give the same bytes.
public struct UnifiedKernelImage: Sendable {
    /// Where Debian's systemd-boot-efi package installs the x86-64 stub.
    public static let defaultStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
    /// The stub and a kernel's headers lie within their first bytes.
    static let headBytes = 64 << 10

    public var stub: String
    public var kernel: String
    public var initrd: String?
    public var commandLine: String
    /// The guest's /etc/os-release (shown by boot menus, measured by the stub).
    public var osRelease: [UInt8]

    public init(kernel: String, initrd: String?, commandLine: String, osRelease: [UInt8],
                stub: String = UnifiedKernelImage.defaultStub) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.osRelease = osRelease
        self.stub = stub
    }

    /// Where each piece goes; computed before anything is written.
    public struct Layout: Sendable {
        public var stub: PEImage
        /// The stub's bytes with the updated headers (the checksum still zero).
        public var head: [UInt8]
        public var sections: [(section: PEImage.Section, content: Content)]
        public var fileSize: Int64
    }

    public enum Content: Sendable {
        case bytes([UInt8])
        case file(String)
    }

    /// Refuses a missing stub (naming the package) and a kernel that is not an EFI-stub PE.
    public func layout() throws -> Layout {
        guard FS.exists(stub) else {
            throw RootfsError("the EFI stub \(stub) is missing: a unified kernel image is built on systemd's stub",
                              hint: "apt-get install systemd-boot-efi (it ships \(Self.defaultStub))")
        }
        let stubFD = try OwnedFileDescriptor(path: stub, flags: O_RDONLY, name: "the EFI stub \(stub)")
        let stubSize = try stubFD.size()
        let stubBytes = try stubFD.read(count: Int(try Checked.convert(stubSize, to: Int32.self, "the size of the EFI stub \(stub)")), at: 0)
        let pe = try PEImage(head: stubBytes, what: "the EFI stub \(stub)")
        guard pe.subsystem == PEImage.subsystemEFIApplication else {
            throw RootfsError("\(stub) is not an EFI application (PE subsystem \(pe.subsystem))",
                              hint: "use systemd's linuxx64.efi.stub (apt-get install systemd-boot-efi)")
        }
        guard let last = pe.sections.max(by: { $0.virtualAddress < $1.virtualAddress }) else {
            throw RootfsError("the EFI stub \(stub) has no sections")
        }
        let kernelHead = try Self.checkKernel(kernel, machine: pe.machine)
        let uname = Self.kernelRelease(kernelHead)

        var pieces: [(String, Content, Int64)] = [(".osrel", .bytes(osRelease), Int64(osRelease.count))]
        let cmdline = Array(commandLine.utf8)
        pieces.append((".cmdline", .bytes(cmdline), Int64(cmdline.count)))
        if let uname { pieces.append((".uname", .bytes(Array(uname.utf8)), Int64(uname.utf8.count))) }
        if let initrd {
            let fd = try OwnedFileDescriptor(path: initrd, flags: O_RDONLY, name: "the initrd \(initrd)")
            pieces.append((".initrd", .file(initrd), try fd.size()))
        }
        let kernelFD = try OwnedFileDescriptor(path: kernel, flags: O_RDONLY, name: "the kernel \(kernel)")
        pieces.append((".linux", .file(kernel), try kernelFD.size()))

        // The new entries must fit between the section table and the first section's data.
        let tableEnd = pe.sectionTableOffset + (pe.numberOfSections + pieces.count) * PEImage.Section.size
        let firstData = pe.sections.map { Int($0.pointerToRawData) }.filter { $0 > 0 }.min() ?? Int(pe.sizeOfHeaders)
        guard tableEnd <= min(Int(pe.sizeOfHeaders), firstData) else {
            throw RootfsError("the EFI stub \(stub) has no room for \(pieces.count) more section headers (\(pe.numberOfSections) sections, headers end at \(pe.sizeOfHeaders))",
                              hint: "use the stub of Debian's systemd-boot-efi package")
        }

        var virtualAddress = try alignUp(try Checked.add(last.virtualAddress, last.virtualSize, "the stub's last section"),
                                         pe.sectionAlignment, "the stub's image size")
        // After everything in the stub file (its COFF symbol table follows the sections), so nothing is overwritten.
        let fileAlignment = Int64(pe.fileAlignment)
        let stubEnd = max(stubSize, pe.sections.map { Int64($0.pointerToRawData) + Int64($0.sizeOfRawData) }.max() ?? 0)
        var fileOffset = try alignUp(stubEnd, fileAlignment, "the stub's size")
        var sections: [(PEImage.Section, Content)] = []
        var addedInitialized: UInt32 = 0
        for (name, content, size) in pieces {
            let size32 = try Checked.convert(size, to: UInt32.self, "the size of \(name) (\(size) bytes; a PE image holds at most 4 GiB)")
            let raw = try alignUp(size32, pe.fileAlignment, "the size of \(name)")
            let section = PEImage.Section(name: name, virtualSize: size32, virtualAddress: virtualAddress,
                                          sizeOfRawData: raw, pointerToRawData: try Checked.convert(fileOffset, to: UInt32.self, "the file offset of \(name)"))
            sections.append((section, content))
            addedInitialized = try Checked.add(addedInitialized, raw, "the initialized data of the UKI")
            virtualAddress = try alignUp(try Checked.add(virtualAddress, size32, "the virtual address after \(name)"),
                                         pe.sectionAlignment, "the virtual address after \(name)")
            fileOffset = try Checked.add(fileOffset, Int64(raw), "the UKI's size")
        }

        var head = BinaryEncoder(zeros: 0)
        head.append(stubBytes)
        for (i, (section, _)) in sections.enumerated() {
            head.put(section.bytes, at: pe.sectionTableOffset + (pe.numberOfSections + i) * PEImage.Section.size)
        }
        head.put(UInt16(pe.numberOfSections + sections.count), at: pe.coffOffset + 2)
        head.put(virtualAddress, at: pe.sizeOfImageOffset)
        let initialized = try BinaryDecoder(stubBytes, what: "the EFI stub").u32(pe.sizeOfInitializedDataOffset)
        head.put(try Checked.add(initialized, addedInitialized, "SizeOfInitializedData"), at: pe.sizeOfInitializedDataOffset)
        // A signature over the stub does not cover the UKI: it must be signed again anyway.
        if pe.certificateTable.size != 0 {
            head.put(UInt64(0), at: pe.dataDirectoryOffset + 32)
        }
        head.put(UInt32(0), at: pe.checksumOffset)
        return Layout(stub: pe, head: head.bytes, sections: sections.map { ($0.0, $0.1) }, fileSize: fileOffset)
    }

    /// Writes the UKI to a temporary name next to `output`, then renames it.
    @discardableResult
    public func write(to output: String) throws -> Layout {
        let layout = try layout()
        let temporary = FS.siblingTemporaryPath(for: output)
        var keep = false
        defer { if !keep { unlink(temporary) } }
        var fd = try OwnedFileDescriptor(path: temporary, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o644, name: output)
        guard ftruncate(fd.raw, off_t(layout.fileSize)) == 0 else {
            throw RootfsError("cannot size \(output): \(FS.errnoText())", hint: "is the disk holding \(FS.parent(output)) full?")
        }
        try fd.writeAll(layout.head, at: 0)
        for (section, content) in layout.sections {
            switch content {
            case .bytes(let bytes): try fd.writeAll(bytes, at: Int64(section.pointerToRawData))
            case .file(let path):
                let input = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
                try Self.copy(from: input, to: fd, at: Int64(section.pointerToRawData), count: Int64(section.virtualSize), name: path)
            }
        }
        // The checksum covers the whole file: read it back once.
        var checksum = PEImage.Checksum(checksumFieldOffset: layout.stub.checksumOffset)
        var position: Int64 = 0
        while position < layout.fileSize {
            let chunk = try fd.read(count: Int(min(1 << 20, layout.fileSize - position)), at: position)
            guard !chunk.isEmpty else { break }
            chunk.withUnsafeBytes { checksum.update($0) }
            position += Int64(chunk.count)
        }
        var field = BinaryEncoder()
        field.append(checksum.value)
        try fd.writeAll(field.bytes, at: Int64(layout.stub.checksumOffset))
        try fd.close()
        try FS.rename(temporary, to: output)
        keep = true
        return layout
    }

    /// The kernel's first bytes, once it is known to be a PE image for the stub's machine
    /// (a kernel built with CONFIG_EFI_STUB).
    static func checkKernel(_ kernel: String, machine: UInt16) throws -> [UInt8] {
        let fd = try OwnedFileDescriptor(path: kernel, flags: O_RDONLY, name: "the kernel \(kernel)")
        let head = try fd.read(count: headBytes, at: 0)
        let pe: PEImage
        do {
            pe = try PEImage(head: head, what: "the kernel \(kernel)")
        } catch let error as RootfsError {
            throw RootfsError("the kernel \(kernel) has no EFI stub: \(error.message)",
                              hint: "a unified kernel image needs a kernel built with CONFIG_EFI_STUB (Debian's linux-image-*-amd64 and -cloud-amd64 have it): pass its vmlinuz, not vmlinux or an uncompressed ELF")
        }
        guard pe.machine == machine else {
            throw RootfsError("the kernel \(kernel) is for PE machine 0x\(String(pe.machine, radix: 16)), the stub for 0x\(String(machine, radix: 16))",
                              hint: "use a kernel for the stub's architecture")
        }
        return head
    }

    /// The release ("6.1.0-57-cloud-amd64") from an x86 boot header's kernel_version
    /// string, as ukify's .uname holds it; nil when the kernel has none.
    static func kernelRelease(_ head: [UInt8]) -> String? {
        let d = BinaryDecoder(head, what: "the kernel's boot header")
        guard (try? d.bytes(at: 0x202, count: 4)) == Array("HdrS".utf8),
              let pointer = try? d.u16(0x20e), pointer != 0 else { return nil }
        let start = Int(pointer) + 0x200
        guard start < head.count else { return nil }
        let text = head[start...].prefix { $0 != 0 && $0 != 0x20 }
        guard !text.isEmpty, text.count < 128, text.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return nil }
        return String(decoding: text, as: UTF8.self)
    }

    static func copy(from input: borrowing OwnedFileDescriptor, to output: borrowing OwnedFileDescriptor,
                     at offset: Int64, count: Int64, name: String) throws {
        var done: Int64 = 0
        while done < count {
            let chunk = try input.read(count: Int(min(8 << 20, count - done)), at: done)
            guard !chunk.isEmpty else { throw RootfsError("\(name) shrank while it was being copied") }
            try output.writeAll(chunk, at: offset + done)
            done += Int64(chunk.count)
        }
    }
}
