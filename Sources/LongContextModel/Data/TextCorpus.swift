import Foundation

/// Bytes as tokens: ids 0–255 are the bytes of UTF-8 text, then three special ids.
public enum ByteTokenizer {
    public static let bos: Int32 = 256
    public static let eos: Int32 = 257
    public static let pad: Int32 = 258
    /// 259: the project's models use this vocabulary.
    public static let vocabSize = 259

    public static func encode(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }

    /// Text of the byte ids (special ids dropped; invalid UTF-8 repaired as Unicode does).
    public static func decode(_ ids: [Int32]) -> String {
        String(decoding: ids.compactMap { (0..<256).contains($0) ? UInt8($0) : nil }, as: UTF8.self)
    }
}

/// A natural-language corpus cut into whole documents: the King James Bible's 66 books, as
/// Debian's `bible-kjv` prints them (`bible -f Gen1:1-Rev22:21`: one verse per line, `Ge1:1 In
/// the beginning …`). Splits are by book, never by line: whole books are held out for
/// validation and for the long-document experiments, so no held-out text shares a chapter with
/// training text.
public struct TextCorpus: Sendable {
    public struct Document: Sendable, Equatable {
        /// The book's abbreviation as `bible` prints it (`Ge`, `1Sm`, `Rev`).
        public let name: String
        /// Verses, one per line (the references stripped).
        public let text: String
    }

    public let documents: [Document]

    /// Books held out for validation (about 4% of the verses).
    public static let validationBooks: Set<String> = ["Ruth", "Eccl", "Jonah", "Mark", "Phi", "2Th", "Jude"]
    /// Long books held out for the long-document experiments (context extension, Temp-LoRA).
    public static let longDocumentBooks: Set<String> = ["Job", "Luke", "Heb"]

    public init(documents: [Document]) { self.documents = documents }

    /// Parses `bible`'s output (the file `make corpus` writes).
    public init(kjvText: String) throws {
        var docs = [Document](), name = "", lines = [Substring]()
        for (n, line) in kjvText.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            // "<book><chapter>:<verse> <text>"; the book may start with a digit (1Sm).
            guard let space = line.firstIndex(of: " ") else { throw ModelError.malformedCorpusLine(line: n + 1, text: String(line.prefix(40))) }
            let ref = line[..<space]
            var i = ref.startIndex
            if i < ref.endIndex, ref[i].isNumber { i = ref.index(after: i) }
            while i < ref.endIndex, ref[i].isLetter { i = ref.index(after: i) }
            let book = String(ref[..<i])
            guard !book.isEmpty, ref[i...].contains(":") else {
                throw ModelError.malformedCorpusLine(line: n + 1, text: String(line.prefix(40)))
            }
            if book != name {
                if !lines.isEmpty { docs.append(Document(name: name, text: lines.joined(separator: "\n") + "\n")) }
                name = book
                lines = []
            }
            lines.append(line[line.index(after: space)...])
        }
        if !lines.isEmpty { docs.append(Document(name: name, text: lines.joined(separator: "\n") + "\n")) }
        guard !docs.isEmpty else { throw ModelError.emptyCorpus(path: nil) }
        documents = docs
    }

    /// Reads `path` (default: `data/kjv.txt`, which `make corpus` writes).
    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.emptyCorpus(path: path)
        }
        try self.init(kjvText: String(decoding: data, as: UTF8.self))
    }

    public var training: [Document] {
        documents.filter { !Self.validationBooks.contains($0.name) && !Self.longDocumentBooks.contains($0.name) }
    }
    public var validation: [Document] { documents.filter { Self.validationBooks.contains($0.name) } }
    public var longDocuments: [Document] { documents.filter { Self.longDocumentBooks.contains($0.name) } }

    /// Token stream of `documents`: each as BOS, its bytes, EOS.
    public static func tokens(_ documents: [Document]) -> [Int32] {
        var t = [Int32]()
        for d in documents {
            t.append(ByteTokenizer.bos)
            t += ByteTokenizer.encode(d.text)
            t.append(ByteTokenizer.eos)
        }
        return t
    }
}
