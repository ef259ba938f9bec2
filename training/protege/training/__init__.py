"""protege.training"""
