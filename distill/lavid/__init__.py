"""LaViD (methods-spec 4): MCQ sets, language-model concept signatures, the auxiliary-head loss."""
