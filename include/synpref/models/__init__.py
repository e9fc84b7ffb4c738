"""The models: the sentence encoder, Bradley-Terry reward models, how far each source of evidence can be trusted."""
