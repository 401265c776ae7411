import Testing
@testable import KilnTemplate

@Suite("Closest known VM sizes")
struct VMSizeSuggestionTests {
    @Test("edit distance without regard to case")
    func editDistance() {
        #expect(AzureVMSize.editDistance(Array("kitten".utf8), Array("sitting".utf8)) == 3)
        #expect(AzureVMSize.editDistance([], Array("abc".utf8)) == 3)
        #expect(AzureVMSize.closest(to: "STANDARD_D2S_V5").first == "Standard_D2s_v5")
    }

    @Test("the same family first, then the nearest names")
    func sameFamilyFirst() {
        #expect(AzureVMSize.family(of: "standard_nc6s_v3") == "nc")
        #expect(AzureVMSize.family(of: "basic_a1") == "a")
        #expect(AzureVMSize.family(of: "d4s_v5") == "d")
        // A typo in the version: the same size in the other versions.
        #expect(AzureVMSize.closest(to: "Standard_D4s_v9") == ["Standard_D4s_v3", "Standard_D4s_v4", "Standard_D4s_v5"])
        // A typo in the tier prefix still finds the family.
        #expect(AzureVMSize.closest(to: "Standrd_E8s_v5").allSatisfy { $0.hasPrefix("Standard_E") })
        #expect(AzureVMSize.closest(to: "Standard_NC6s_v9").allSatisfy { $0.hasPrefix("Standard_NC") })
    }

    @Test("validate's warning names the closest known sizes")
    func warning() {
        let result = TemplateLoader.load(text: linuxTemplate(properties: #""vmProfile": {"vmSize": "Standard_D4s_v9"},"#))
        #expect(result.isValid)
        #expect(result.warnings.first?.message.contains("the closest known: Standard_D4s_v3, Standard_D4s_v4, Standard_D4s_v5") == true, "\(result.warnings)")
    }
}
